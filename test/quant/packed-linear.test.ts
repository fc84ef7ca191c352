// Packed low-bit linear layer: native kernels (native/cpu/qlinear.cc) against the TypeScript
// twin for 2/3/4/8 bits, group sizes 32, 64, 128 and I (vector paths) and 8, 16, 48 (scalar
// paths), odd row counts, bias, accumulateDx, null dx / dscales, clamped scales, rank-3 inputs;
// every GEMM kernel family this CPU can run (the scalar one and the AVX-512 tiling emulated on
// AVX2 included); gradients against finite differences; dequantizePacked bit-exact against
// primitives.dequantize; identical results for 1 and several threads; argument errors.
//
// Tolerances are bounds on f32 rounding, derived as in test/ops/matmul-check.ts: a length-K
// f32 dot product in any order (blocks of >= 32 terms, fused multiply-adds) is within
// (K + 2 ceil(K/32) + 8) u sum_k |a_k b_k| <= (...) u |a| |b| of the exact value (u = 2^-24),
// the twin rounding once. dscales adds the group sum of G products of a rounded dW_hat,
// reassociated across vector lanes and tiles. A wrong code, zero, scale or dropped product is
// orders of magnitude above these bounds.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native, nativeFn } from '../../src/engine/native.js';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { setMatmulKernel, type MatmulKernelName } from '../../src/ops/matmul.js';
import { unpackQweight } from '../../src/quant/gptq-pack.js';
import { dequantize, qmax } from '../../src/quant/primitives.js';
import {
  dequantizePacked,
  packWeight,
  packedLinearBackward,
  packedLinearForward,
  type PackedWeight,
} from '../../src/quant/packed-linear.js';
import { dequantizePackedRef, packedLinearBackwardRef, packedLinearForwardRef } from '../../src/quant/ref/packed-linear.js';
import { assertClose, checkGrad, randn } from '../util.js';

const U = 2 ** -24;
const info = native().cpuInfo();
const KERNELS: MatmulKernelName[] = info.avx2 ? ['auto', 'scalar', 'avx512-emulated'] : ['auto'];

interface Layer {
  w: PackedWeight;
  q: Uint8Array; // (O, I)
  scales: Tensor; // (O, I/G)
}

/** Random codes and zero points; scales in [0.02, 0.1], with `clamped` of them outside [1e-4, 1e4]. */
function makeLayer(rng: Rng, O: number, I: number, bits: number, G: number, clamped = 0): Layer {
  const qm = qmax(bits);
  const q = new Uint8Array(O * I);
  for (let k = 0; k < q.length; k++) q[k] = rng.int(0, qm + 1);
  const zeros = new Uint8Array((O * I) / G);
  for (let k = 0; k < zeros.length; k++) zeros[k] = rng.int(0, qm + 1);
  const scales = Tensor.zeros([O, I / G]);
  rng.fillUniform(scales.f32, 0.02, 0.1);
  const outside = [0, -0.25, 3e-5, 2e4];
  for (let k = 0; k < clamped; k++) scales.f32[rng.int(0, scales.size)] = outside[k % outside.length]!;
  return { w: packWeight(q, zeros, O, I, bits, G), q, scales };
}

/** W_hat (O, I) by the primitives: dequantize(unpackQweight(...)). */
function wHat(L: Layer): Float32Array {
  const { O, I, bits, G } = L.w;
  return dequantize(unpackQweight(L.w.qweight, O, I, bits), L.scales.f32, Float32Array.from(L.w.zeros), O, I, bits, G);
}

function rowNorms(a: Float32Array, rows: number, cols: number): Float64Array {
  const r = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    let s = 0;
    for (let j = 0; j < cols; j++) s += a[i * cols + j]! ** 2;
    r[i] = Math.sqrt(s);
  }
  return r;
}

function colNorms(a: Float32Array, rows: number, cols: number): Float64Array {
  const c = new Float64Array(cols);
  for (let i = 0; i < rows; i++) for (let j = 0; j < cols; j++) c[j] += a[i * cols + j]! ** 2;
  return c.map(Math.sqrt);
}

/** Asserts |got - want| <= tol elementwise (tol per element); reports the worst element. */
function assertWithin(got: Float32Array, want: Float32Array, tol: Float64Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  let worst = -1;
  let ratio = 1;
  for (let k = 0; k < got.length; k++) {
    const r = Math.abs(got[k]! - want[k]!) / tol[k]!;
    if (!(r <= ratio)) {
      worst = k;
      ratio = r;
      if (Number.isNaN(r)) break;
    }
  }
  if (worst >= 0) assert.fail(`${what}: element ${worst}: got ${got[worst]}, expected ${want[worst]} (tolerance ${tol[worst]})`);
}

const dotFactor = (K: number): number => (K + 2 * Math.ceil(K / 32) + 8) * U;

/** Runs forward and backward natively and through the twin on one layer; asserts agreement. */
function checkAgainstTwin(rng: Rng, L: Layer, N: number, opts: { bias: boolean; accumulateDx: boolean }, tag: string): void {
  const { O, I, G } = L.w;
  const groups = I / G;
  const x = randn(rng, [N, I]);
  const dout = randn(rng, [N, O]);
  const bias = opts.bias ? randn(rng, [O]) : null;
  const W = wHat(L);

  // Forward: out is overwritten (NaN must not leak through).
  const out = Tensor.zeros([N, O]);
  out.f32.fill(NaN);
  const want = Tensor.zeros([N, O]);
  packedLinearForward(out, x, L.w, L.scales, bias);
  packedLinearForwardRef(want, x, L.w, L.scales, bias);
  const xn = rowNorms(x.f32, N, I);
  const wn = rowNorms(W, O, I);
  const ftol = new Float64Array(N * O);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < O; o++) ftol[n * O + o] = dotFactor(I) * (xn[n]! * wn[o]! + (bias ? Math.abs(bias.f32[o]!) : 0)) + 1e-30;
  }
  assertWithin(out.f32, want.f32, ftol, `${tag} forward`);

  // Backward: dx overwritten or accumulated; dscales accumulated onto a nonzero start.
  const dx = randn(rng, [N, I]);
  if (!opts.accumulateDx) dx.f32.fill(NaN);
  const dxWant = opts.accumulateDx ? dx.clone() : Tensor.zeros([N, I]);
  const dx0 = dx.clone();
  const ds = randn(rng, [O, groups]);
  const dsWant = ds.clone();
  const ds0 = ds.clone();
  const inputs = [x, dout, L.scales].map((t) => t.clone());
  const qw = L.w.qweight.slice();
  packedLinearBackward(dx, ds, dout, x, L.w, L.scales, opts.accumulateDx);
  packedLinearBackwardRef(dxWant, dsWant, dout, x, L.w, L.scales, opts.accumulateDx);
  [x, dout, L.scales].forEach((t, k) => assert.deepEqual(t.f32, inputs[k]!.f32, `${tag}: an input was modified`));
  assert.deepEqual(L.w.qweight, qw, `${tag}: qweight was modified`);

  const dn = rowNorms(dout.f32, N, O);
  const wc = colNorms(W, O, I);
  const xtol = new Float64Array(N * I);
  for (let n = 0; n < N; n++) {
    for (let i = 0; i < I; i++) {
      xtol[n * I + i] = dotFactor(O) * (dn[n]! * wc[i]! + (opts.accumulateDx ? Math.abs(dx0.f32[n * I + i]!) : 0)) + 1e-30;
    }
  }
  assertWithin(dx.f32, dxWant.f32, xtol, `${tag} dx`);

  // dscales: |dW error| <= dotFactor-like bound over N; then a G-term sum of (q - z) * dW.
  const dcol = colNorms(dout.f32, N, O);
  const xcol = colNorms(x.f32, N, I);
  const dW = new Float64Array(O * I);
  for (let n = 0; n < N; n++) {
    for (let o = 0; o < O; o++) {
      const d = dout.f32[n * O + o]!;
      for (let i = 0; i < I; i++) dW[o * I + i] += d * x.f32[n * I + i]!;
    }
  }
  const nFactor = (N + 2 * Math.ceil(N / 128) + 8) * U;
  const stol = new Float64Array(O * groups);
  for (let o = 0; o < O; o++) {
    for (let g = 0; g < groups; g++) {
      const z = L.w.zeros[o * groups + g]!;
      let a = 0;
      let b = 0;
      for (let i = g * G; i < (g + 1) * G; i++) {
        const c = Math.abs(L.q[o * I + i]! - z);
        a += c * dcol[o]! * xcol[i]!;
        b += c * Math.abs(dW[o * I + i]!);
      }
      stol[o * groups + g] = nFactor * a + (G + I / 32 + 8) * U * b + 2 * U * Math.abs(ds0.f32[o * groups + g]!) + 1e-30;
    }
  }
  assertWithin(ds.f32, dsWant.f32, stol, `${tag} dscales`);
}

interface LayerShape {
  O: number;
  I: number;
  G: number;
}

const VECTOR_SHAPES: LayerShape[] = [
  { O: 32, I: 64, G: 32 },
  { O: 32, I: 64, G: 64 },
  { O: 96, I: 128, G: 32 },
  { O: 96, I: 128, G: 64 },
  { O: 96, I: 128, G: 128 },
  { O: 128, I: 384, G: 32 },
  { O: 128, I: 384, G: 64 },
  { O: 128, I: 384, G: 128 },
  { O: 128, I: 384, G: 384 },
];
// Group sizes that are not multiples of 32 take the scalar paths.
const SCALAR_G_SHAPES: LayerShape[] = [
  { O: 32, I: 64, G: 8 },
  { O: 96, I: 128, G: 16 },
  { O: 64, I: 96, G: 48 },
];
const ODD_N = [1, 3, 17, 130];
const BITS = [2, 3, 4, 8];

for (const kernel of KERNELS) {
  test(`packed linear [${kernel}]: forward and backward match the twin (bits 2/3/4/8, G 32/64/128/I and 8/16/48, odd N)`, () => {
    setMatmulKernel(kernel);
    try {
      const rng = new Rng(kernel === 'auto' ? 11 : kernel === 'scalar' ? 12 : 13);
      // The full sweep on the default kernel; a thinner one (smaller layers) on the others.
      const shapes = kernel === 'auto' ? [...VECTOR_SHAPES, ...SCALAR_G_SHAPES] : [...VECTOR_SHAPES.slice(0, 5), SCALAR_G_SHAPES[2]!];
      let k = 0;
      for (const bits of BITS) {
        for (const { O, I, G } of shapes) {
          const N = ODD_N[k % ODD_N.length]!;
          const L = makeLayer(rng, O, I, bits, G, k % 3 === 0 ? 4 : 0);
          const opts = { bias: k % 2 === 0, accumulateDx: k % 4 >= 2 };
          checkAgainstTwin(rng, L, N, opts, `bits=${bits} ${O}x${I} G=${G} N=${N} bias=${opts.bias} acc=${opts.accumulateDx}`);
          k++;
        }
      }
    } finally {
      setMatmulKernel('auto');
    }
  });
}

test('packed linear: every odd N on one layer per bit width, rank-3 inputs', () => {
  const rng = new Rng(21);
  for (const bits of BITS) {
    const L = makeLayer(rng, 96, 128, bits, 32, 2);
    for (const N of [...ODD_N, 7, 33, 65]) {
      checkAgainstTwin(rng, L, N, { bias: N % 2 === 1, accumulateDx: N > 30 }, `bits=${bits} 96x128 G=32 N=${N}`);
    }
  }
  // (B, T, I) is (B*T, I).
  const L = makeLayer(rng, 64, 96, 4, 32);
  const x = randn(rng, [3, 5, 96]);
  const out3 = Tensor.zeros([3, 5, 64]);
  const out2 = Tensor.zeros([15, 64]);
  packedLinearForward(out3, x, L.w, L.scales);
  packedLinearForward(out2, x.view([15, 96]), L.w, L.scales);
  assert.deepEqual(out3.f32, out2.f32);
});

test('packed linear: null dx / null dscales compute only the other; large-block layer (several K and column blocks)', () => {
  const rng = new Rng(31);
  const L = makeLayer(rng, 128, 384, 3, 64);
  const N = 17;
  const x = randn(rng, [N, 384]);
  const dout = randn(rng, [N, 128]);
  const dxFull = Tensor.zeros([N, 384]);
  const dsFull = Tensor.zeros([128, 6]);
  packedLinearBackward(dxFull, dsFull, dout, x, L.w, L.scales);
  const dxOnly = Tensor.zeros([N, 384]);
  packedLinearBackward(dxOnly, null, dout, x, L.w, L.scales);
  assert.deepEqual(dxOnly.f32, dxFull.f32);
  const dsOnly = Tensor.zeros([128, 6]);
  packedLinearBackward(null, dsOnly, dout, x, L.w, L.scales);
  assert.deepEqual(dsOnly.f32, dsFull.f32);
  packedLinearBackward(null, null, dout, x, L.w, L.scales); // a no-op, still checked

  // Layers with more than one K block (I, O > 256) and more than one dW tile (I > 1024); with
  // G = 352 and G = I groups span two dW tiles (the partial sums of both must be added).
  const big = makeLayer(rng, 288, 1056, 4, 32);
  checkAgainstTwin(rng, big, 9, { bias: true, accumulateDx: true }, 'bits=4 288x1056 G=32 N=9');
  for (const G of [352, 1056]) {
    checkAgainstTwin(rng, makeLayer(rng, 32, 1056, 3, G), 5, { bias: false, accumulateDx: false }, `bits=3 32x1056 G=${G} N=5`);
  }
});

test('dequantizePacked equals dequantize(unpackQweight(...)) bit for bit, every kernel family', () => {
  const rng = new Rng(41);
  for (const kernel of KERNELS) {
    setMatmulKernel(kernel);
    try {
      for (const bits of BITS) {
        for (const { O, I, G } of [...VECTOR_SHAPES, ...SCALAR_G_SHAPES]) {
          const L = makeLayer(rng, O, I, bits, G, 3);
          const got = Tensor.zeros([O, I]);
          got.f32.fill(NaN);
          dequantizePacked(got, L.w, L.scales);
          const want = wHat(L);
          for (let e = 0; e < want.length; e++) {
            if (!Object.is(got.f32[e], want[e])) {
              assert.fail(`[${kernel}] bits=${bits} ${O}x${I} G=${G}: element ${e}: got ${got.f32[e]}, expected ${want[e]}`);
            }
          }
          const viaTwin = Tensor.zeros([O, I]);
          dequantizePackedRef(viaTwin, L.w, L.scales);
          assert.deepEqual(viaTwin.f32, want);
        }
      }
    } finally {
      setMatmulKernel('auto');
    }
  }
});

test('packed linear: dscales and dx against finite differences of sum(out * R)', () => {
  const rng = new Rng(51);
  for (const [bits, G] of [
    [3, 32],
    [4, 64],
    [2, 16],
  ] as const) {
    const O = 32;
    const I = 64;
    const N = 3;
    const L = makeLayer(rng, O, I, bits, G);
    rng.fillUniform(L.scales.f32, 0.05, 0.1); // stays inside the clamp range under +-eps
    const x = randn(rng, [N, I]);
    const R = randn(rng, [N, O]);
    const bias = randn(rng, [O]);
    const out = Tensor.zeros([N, O]);
    const loss = (): number => {
      packedLinearForward(out, x, L.w, L.scales, bias);
      let s = 0;
      for (let k = 0; k < out.size; k++) s += out.f32[k]! * R.f32[k]!;
      return s;
    };
    const dx = Tensor.zeros([N, I]);
    const ds = Tensor.zeros([O, I / G]);
    packedLinearBackward(dx, ds, R, x, L.w, L.scales);
    // The loss is linear in scales and in x: central differences are exact up to f32 noise.
    checkGrad(loss, L.scales.f32, ds.f32, { eps: 1e-2, atol: 2e-2, rtol: 1e-3, samples: 24, what: `dscales bits=${bits} G=${G}` });
    checkGrad(loss, x.f32, dx.f32, { eps: 1e-2, atol: 2e-3, rtol: 1e-3, samples: 24, what: `dx bits=${bits} G=${G}` });
  }
});

test('packed linear: clamped scales are clamped in the forward and straight-through in dscales', () => {
  const rng = new Rng(61);
  const L = makeLayer(rng, 32, 64, 4, 32);
  L.scales.f32[0] = -1; // clamps to 1e-4
  L.scales.f32[1] = 5e4; // clamps to 1e4
  const W = Tensor.zeros([32, 64]);
  dequantizePacked(W, L.w, L.scales);
  const z0 = L.w.zeros[0]!;
  const z1 = L.w.zeros[1]!;
  assert.equal(W.f32[0], Math.fround((L.q[0]! - z0) * Math.fround(1e-4)));
  assert.equal(W.f32[32], Math.fround((L.q[32]! - z1) * 1e4));
  // dscales[0, 0] = sum over the group of (q - z) * dW_hat: the same as for an in-range scale.
  const x = randn(rng, [5, 64]);
  const dout = randn(rng, [5, 32]);
  const ds = Tensor.zeros([32, 2]);
  packedLinearBackward(null, ds, dout, x, L.w, L.scales);
  let want = 0;
  for (let n = 0; n < 5; n++) {
    for (let i = 0; i < 32; i++) want += (L.q[i]! - z0) * dout.f32[n * 32]! * x.f32[n * 64 + i]!;
  }
  assertClose([ds.f32[0]!], [want], { atol: 1e-4, rtol: 1e-5, what: 'dscales of a clamped scale' });
  assert.notEqual(ds.f32[0], 0);
});

test('packed linear: argument errors name the op and the argument', () => {
  const rng = new Rng(71);
  const q = new Uint8Array(32 * 64);
  const z = new Uint8Array(32 * 2);
  assert.throws(() => packWeight(q, z, 32, 64, 5, 32), /packWeight: bits must be 2, 3, 4 or 8, got 5/);
  assert.throws(() => packWeight(q, z, 32, 64, 1, 32), /packWeight: bits/);
  assert.throws(() => packWeight(new Uint8Array(32 * 48), new Uint8Array(32 * 3), 32, 48, 4, 16), /packWeight: .*in_features I to be a multiple of 32/);
  assert.throws(() => packWeight(new Uint8Array(40 * 64), new Uint8Array(40 * 2), 40, 64, 4, 32), /packWeight: .*out_features O to be a multiple of 32/);
  assert.throws(() => packWeight(q, new Uint8Array(32 * 3), 32, 64, 4, 24), /packWeight: group size G = 24 must divide in_features I = 64/);
  assert.throws(() => packWeight(q.subarray(1), z, 32, 64, 4, 32), /packWeight: argument 'q'/);
  assert.throws(() => packWeight(q, z.subarray(1), 32, 64, 4, 32), /packWeight: zeros has 63 elements/);
  assert.throws(() => packWeight(q, new Uint8Array(64).fill(4), 32, 64, 2, 32), /packWeight: zeros\[0, 0\] = 4 exceeds qmax = 3/);
  const bad = q.slice();
  bad[70] = 16;
  assert.throws(() => packWeight(bad, z, 32, 64, 4, 32), /packWeight: q\[1, 6\] = 16 does not fit in 4 bits/);

  const L = makeLayer(rng, 32, 64, 4, 32);
  const x = randn(rng, [3, 64]);
  const out = Tensor.zeros([3, 32]);
  const fwd = (o: Tensor, xx: Tensor, s: Tensor = L.scales, b: Tensor | null = null, w = L.w): void =>
    packedLinearForward(o, xx, w, s, b);
  assert.throws(() => fwd(out, randn(rng, [3, 63])), /packedLinearForward: argument 'x' must be \(\.\.\., I=64\)/);
  assert.throws(() => fwd(Tensor.zeros([4, 32]), x), /packedLinearForward: argument 'out' has 4 rows/);
  assert.throws(() => fwd(Tensor.zeros([3, 33]), x), /packedLinearForward: argument 'out'/);
  assert.throws(() => fwd(out, x, Tensor.zeros([32, 3])), /packedLinearForward: argument 'scales' must be \(O=32, I\/G=2\)/);
  assert.throws(() => fwd(out, x, L.scales, Tensor.zeros([31])), /packedLinearForward: argument 'bias'/);
  assert.throws(() => fwd(out, Tensor.zeros([3, 64], 'i32')), /packedLinearForward: argument 'x' must be f32/);
  assert.throws(() => fwd(out, x, L.scales, null, { ...L.w, qweight: L.w.qweight.subarray(1) }), /packedLinearForward: w\.qweight has/);
  assert.throws(() => fwd(out, x, L.scales, null, { ...L.w, bits: 3 }), /packedLinearForward: w\.qweight has/);
  assert.throws(() => fwd(out, x, L.scales, null, { ...L.w, zeros: new Uint8Array(64).fill(200) }), /packedLinearForward: zeros\[0, 0\] = 200 exceeds/);
  const shared = Tensor.zeros([3, 64]);
  const aliased = new Tensor([3, 32], 'f32', shared.f32.subarray(32, 128));
  assert.throws(() => fwd(aliased, shared), /packedLinearForward: argument 'out' overlaps argument 'x'/);
  assert.throws(() => packedLinearForwardRef(out, randn(rng, [3, 63]), L.w, L.scales), /packedLinearForwardRef: argument 'x'/);

  const dout = randn(rng, [3, 32]);
  assert.throws(() => packedLinearBackward(Tensor.zeros([3, 32]), null, dout, x, L.w, L.scales), /packedLinearBackward: argument 'dx'/);
  assert.throws(() => packedLinearBackward(null, Tensor.zeros([32, 1]), dout, x, L.w, L.scales), /packedLinearBackward: argument 'dscales'/);
  assert.throws(() => packedLinearBackward(null, null, randn(rng, [2, 32]), x, L.w, L.scales), /packedLinearBackward: argument 'dout' has 2 rows/);
  assert.throws(() => packedLinearBackward(dout, null, dout, x, L.w, L.scales), /packedLinearBackward: argument 'dx'/);
  const dx = Tensor.zeros([3, 64]);
  assert.throws(() => packedLinearBackward(dx, null, dout, dx, L.w, L.scales), /packedLinearBackward: argument 'dx' overlaps argument 'x'/);
  assert.throws(() => packedLinearBackwardRef(null, Tensor.zeros([32, 1]), dout, x, L.w, L.scales), /packedLinearBackwardRef: argument 'dscales'/);
  assert.throws(() => dequantizePacked(Tensor.zeros([64, 32]), L.w, L.scales), /dequantizePacked: argument 'out' must be \(O=32, I=64\)/);

  // The native entry points re-check what they are given.
  const raw = nativeFn<(...a: unknown[]) => void>('qlinearForward');
  const args = (bits: number, I: number, G: number): unknown[] => [out.f32, x.f32, L.w.qweight, L.w.zeros, L.scales.f32, null, 3, 32, I, bits, G];
  assert.throws(() => raw(...args(5, 64, 32)), /qlinearForward: argument 'bits' must be 2, 3, 4 or 8/);
  assert.throws(() => raw(...args(4, 48, 16)), /qlinearForward: argument 'I' must be a positive multiple of 32/);
  assert.throws(() => raw(...args(4, 64, 24)), /qlinearForward: argument 'G' must divide I/);
  assert.throws(() => raw(...args(8, 64, 32)), /qlinearForward: argument 'qweight' has 256 elements, needs 512/);
});

// Last: the pool can only shrink, so this test leaves the process on one thread.
test('packed linear: results are identical on one thread and on the default pool', () => {
  const cases = [
    { O: 128, I: 384, bits: 4, G: 128, N: 130 },
    { O: 288, I: 1056, bits: 3, G: 32, N: 65 },
    { O: 96, I: 128, bits: 2, G: 16, N: 33 },
  ];
  const run = (): Float32Array[] =>
    cases.flatMap(({ O, I, bits, G, N }) => {
      const r = new Rng(O + I + N);
      const L = makeLayer(r, O, I, bits, G);
      const x = randn(r, [N, I]);
      const dout = randn(r, [N, O]);
      const out = Tensor.zeros([N, O]);
      const dx = Tensor.zeros([N, I]);
      const ds = Tensor.zeros([O, I / G]);
      packedLinearForward(out, x, L.w, L.scales, randn(r, [O]));
      packedLinearBackward(dx, ds, dout, x, L.w, L.scales);
      return [out.f32, dx.f32, ds.f32];
    });
  const pooled = run();
  native().setThreads(1);
  const single = run();
  pooled.forEach((a, k) => assert.deepEqual(a, single[k], `result ${k} differs between thread counts`));
});
