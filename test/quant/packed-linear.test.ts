// Packed low-bit linear (GPTQ layout), one spec on every backend (test/ops/spec.ts: the CPU, the
// CUDA emulator, a GPU when present). Through the Backend (uploadPacked, packedTiles,
// packedLinearForward, packedLinearBackward) against the TypeScript twin
// (src/quant/ref/packed-linear.ts): the forward, dx and the step-size gradient dscales for
// 2/3/4/8 bits, group sizes 32, 64, 128 and I (the CPU's vector paths) and 8, 16, 48 (its scalar
// paths), odd row counts, bias, accumulateDx, null dx / dscales, clamped scales, layers of
// several K and column blocks; on the CPU once per GEMM kernel family it can run (the scalar one
// and the AVX-512 tiling emulated on AVX2 included). Gradients against finite differences.
// The host op alone (CPU): rank-3 inputs, dequantizePacked bit for bit against
// primitives.dequantize, argument errors, identical results for 1 and several threads.
// The CUDA wrappers alone (src/quant/cuda/gptq.ts, CUDA backends only), bit for bit against the
// TypeScript references: dequantization (f32 and bf16, whole matrix and tiles) against
// primitives.dequantize on unpackQweight's codes and against dequantizePackedRef; the step-size
// gradient against the dscales reduction of packedLinearBackwardRef and its formula on odd
// layouts (whole matrix, row and group tiles, accumulating); pack -> dequant round trips; every
// bit width (3-bit 96-bit units included), group sizes from 1 to I, odd O, I not a multiple of
// 32 where the packing allows; argument errors.
//
// Tolerances of the backend cases, the same on every backend: bounds on f32 rounding, derived
// as in test/ops/matmul-check.ts: a length-K f32 dot product in any order (blocks of >= 32
// terms, fused multiply-adds) is within (K + 2 ceil(K/32) + 8) u sum_k |a_k b_k| <= (...) u |a| |b|
// of the exact value (u = 2^-24), the twin rounding once. The CPU's fused kernel and CUDA's
// dequantize + f32 GEMM (no TF32) both sum in some such order. dscales adds the group sum of G
// products of a rounded dW_hat (reassociated across vector lanes and tiles on the CPU, summed in
// f64 per group on CUDA). A wrong code, zero, scale or dropped product is orders of magnitude
// above these bounds. The cases of the CUDA wrappers are bit for bit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { PackedArray } from '../../src/backend/backend.js';
import { deviceView, downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { f32ToBf16Ref, type DType } from '../../src/engine/dtype.js';
import { native, nativeFn } from '../../src/engine/native.js';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { setMatmulKernel, type MatmulKernelName } from '../../src/ops/matmul.js';
import { matmulRef } from '../../src/ops/ref/matmul.js';
import {
  dequantizeGptqCuda,
  freePackedWeightCuda,
  gptqScaleGradCuda,
  uploadPackedWeight,
  type GptqTile,
  type PackedWeightCuda,
} from '../../src/quant/cuda/gptq.js';
import { packQweight, unpackQweight } from '../../src/quant/gptq-pack.js';
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
import { assertBitExact } from '../cuda/backends.js';
import { forEachBackend, forEachCudaBackend, type OnBackend } from '../ops/spec.js';

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

/** A layer on a backend: its packed weight and the weight tiles its linears need (none on the CPU). */
interface PackedOn {
  w: PackedArray;
  tile: unknown;
  dwTile: unknown;
}

/** Runs body with L uploaded to the backend and tiles for its forward and step-size gradient; frees both after. */
function withPacked(b: OnBackend, L: Layer, body: (p: PackedOn) => void): void {
  const w = b.be.uploadPacked(L.w);
  try {
    const tiles = b.be.packedTiles(L.w.O * L.w.I, { precision: 'f32', training: true });
    try {
      body({ w: w.value, tile: tiles.w, dwTile: tiles.dw });
    } finally {
      tiles.free();
    }
  } finally {
    w.free();
  }
}

/**
 * Runs forward and backward on the backend and through the twin on one layer; asserts agreement
 * within the bounds of the header, and that no input was modified.
 */
function checkAgainstTwin(b: OnBackend, rng: Rng, L: Layer, N: number, opts: { bias: boolean; accumulateDx: boolean }, tag: string): void {
  const { O, I, G } = L.w;
  const groups = I / G;
  const x = randn(rng, [N, I]);
  const dout = randn(rng, [N, O]);
  const bias = opts.bias ? randn(rng, [O]) : null;
  const W = wHat(L);
  const inputs = [x, dout, L.scales].map((t) => t.f32.slice());
  const qw = L.w.qweight.slice();
  withPacked(b, L, (p) => {
    const gx = b.upload(x.f32), gdout = b.upload(dout.f32), gscales = b.upload(L.scales.f32);

    // Forward: out is overwritten (NaN must not leak through). Bound: dotFactor(I) (|x_n| |W_o| + |bias_o|).
    const gout = b.upload(new Float32Array(N * O).fill(NaN));
    const want = Tensor.zeros([N, O]);
    b.be.packedLinearForward(gout, gx, p.w, gscales, bias && b.upload(bias.f32), N, p.tile, null);
    packedLinearForwardRef(want, x, L.w, L.scales, bias);
    const xn = rowNorms(x.f32, N, I);
    const wn = rowNorms(W, O, I);
    const ftol = new Float64Array(N * O);
    for (let n = 0; n < N; n++) {
      for (let o = 0; o < O; o++) ftol[n * O + o] = dotFactor(I) * (xn[n]! * wn[o]! + (bias ? Math.abs(bias.f32[o]!) : 0)) + 1e-30;
    }
    assertWithin(b.download(gout), want.f32, ftol, `${tag} forward`);

    // Backward: dx overwritten or accumulated; dscales accumulated onto a nonzero start.
    const dx = randn(rng, [N, I]);
    if (!opts.accumulateDx) dx.f32.fill(NaN);
    const dxWant = opts.accumulateDx ? dx.clone() : Tensor.zeros([N, I]);
    const ds = randn(rng, [O, groups]);
    const dsWant = ds.clone();
    const gdx = b.upload(dx.f32), gds = b.upload(ds.f32);
    b.be.packedLinearBackward(gdx, gds, gdout, gx, p.w, gscales, N, opts.accumulateDx, p.tile, p.dwTile, null);
    packedLinearBackwardRef(dxWant, dsWant, dout, x, L.w, L.scales, opts.accumulateDx);
    [x, dout, L.scales].forEach((t, k) => assert.deepEqual(t.f32, inputs[k], `${tag}: an input of the twin was modified`));
    [gx, gdout, gscales].forEach((a, k) => assert.deepEqual(b.download(a), inputs[k], `${tag}: an input was modified`));
    assert.deepEqual(L.w.qweight, qw, `${tag}: qweight was modified`);

    // dx: dotFactor(O) (|dout_n| |W_:,i| + |dx0| where accumulated).
    const dn = rowNorms(dout.f32, N, O);
    const wc = colNorms(W, O, I);
    const xtol = new Float64Array(N * I);
    for (let n = 0; n < N; n++) {
      for (let i = 0; i < I; i++) {
        xtol[n * I + i] = dotFactor(O) * (dn[n]! * wc[i]! + (opts.accumulateDx ? Math.abs(dx.f32[n * I + i]!) : 0)) + 1e-30;
      }
    }
    assertWithin(b.download(gdx), dxWant.f32, xtol, `${tag} dx`);

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
        let byNorms = 0;
        let byTerms = 0;
        for (let i = g * G; i < (g + 1) * G; i++) {
          const c = Math.abs(L.q[o * I + i]! - z);
          byNorms += c * dcol[o]! * xcol[i]!;
          byTerms += c * Math.abs(dW[o * I + i]!);
        }
        stol[o * groups + g] = nFactor * byNorms + (G + I / 32 + 8) * U * byTerms + 2 * U * Math.abs(ds.f32[o * groups + g]!) + 1e-30;
      }
    }
    assertWithin(b.download(gds), dsWant.f32, stol, `${tag} dscales`);
  });
}

/** Runs body with the CPU's GEMM kernel family set to kernel, then back to auto. */
function withKernel(kernel: MatmulKernelName, body: () => void): void {
  setMatmulKernel(kernel);
  try {
    body();
  } finally {
    setMatmulKernel('auto');
  }
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
// Group sizes that are not multiples of 32 take the CPU's scalar paths.
const SCALAR_G_SHAPES: LayerShape[] = [
  { O: 32, I: 64, G: 8 },
  { O: 96, I: 128, G: 16 },
  { O: 64, I: 96, G: 48 },
];
const ODD_N = [1, 3, 17, 130];
const BITS = [2, 3, 4, 8];

/** The sweep of one kernel family: the full one on the default kernel (every backend's), a thinner one (smaller layers) on the others. */
function twinSweep(b: OnBackend, kernel: MatmulKernelName): void {
  const rng = new Rng(kernel === 'auto' ? 11 : kernel === 'scalar' ? 12 : 13);
  const shapes = kernel === 'auto' ? [...VECTOR_SHAPES, ...SCALAR_G_SHAPES] : [...VECTOR_SHAPES.slice(0, 5), SCALAR_G_SHAPES[2]!];
  let k = 0;
  for (const bits of BITS) {
    for (const { O, I, G } of shapes) {
      const N = ODD_N[k % ODD_N.length]!;
      const L = makeLayer(rng, O, I, bits, G, k % 3 === 0 ? 4 : 0);
      const opts = { bias: k % 2 === 0, accumulateDx: k % 4 >= 2 };
      checkAgainstTwin(b, rng, L, N, opts, `[${kernel}] bits=${bits} ${O}x${I} G=${G} N=${N} bias=${opts.bias} acc=${opts.accumulateDx}`);
      k++;
    }
  }
}

forEachBackend('packed linear: forward and backward match the twin (bits 2/3/4/8, G 32/64/128/I and 8/16/48, odd N; every CPU kernel family)', (b) => {
  if (b.name !== 'cpu') return twinSweep(b, 'auto');
  for (const kernel of KERNELS) withKernel(kernel, () => twinSweep(b, kernel));
});

forEachBackend('packed linear: every odd N on one layer per bit width (on the CPU also rank-3 inputs of the host op)', (b) => {
  const rng = new Rng(21);
  for (const bits of BITS) {
    const L = makeLayer(rng, 96, 128, bits, 32, 2);
    for (const N of [...ODD_N, 7, 33, 65]) {
      checkAgainstTwin(b, rng, L, N, { bias: N % 2 === 1, accumulateDx: N > 30 }, `bits=${bits} 96x128 G=32 N=${N}`);
    }
  }
  if (b.name !== 'cpu') return;
  // The host op: (B, T, I) is (B*T, I) (the Backend takes rows).
  const L = makeLayer(rng, 64, 96, 4, 32);
  const x = randn(rng, [3, 5, 96]);
  const out3 = Tensor.zeros([3, 5, 64]);
  const out2 = Tensor.zeros([15, 64]);
  packedLinearForward(out3, x, L.w, L.scales);
  packedLinearForward(out2, x.view([15, 96]), L.w, L.scales);
  assert.deepEqual(out3.f32, out2.f32);
});

forEachBackend('packed linear: null dx / null dscales compute only the other, bit for bit; large-block layers (several K and column blocks)', (b) => {
  const rng = new Rng(31);
  const L = makeLayer(rng, 128, 384, 3, 64);
  const N = 17;
  const x = b.upload(randn(rng, [N, 384]).f32);
  const dout = b.upload(randn(rng, [N, 128]).f32);
  const scales = b.upload(L.scales.f32);
  withPacked(b, L, (p) => {
    const backward = (withDx: boolean, withDs: boolean): { dx: Float32Array | null; ds: Float32Array | null } => {
      const dx = withDx ? b.alloc('f32', N * 384) : null, ds = withDs ? b.alloc('f32', 128 * 6) : null;
      b.be.packedLinearBackward(dx, ds, dout, x, p.w, scales, N, false, p.tile, p.dwTile, null);
      return { dx: dx === null ? null : b.download(dx), ds: ds === null ? null : b.download(ds) };
    };
    const full = backward(true, true);
    assert.deepEqual(backward(true, false).dx, full.dx);
    assert.deepEqual(backward(false, true).ds, full.ds);
    backward(false, false); // a no-op, still checked
  });

  // Layers with more than one K block (I, O > 256) and more than one dW tile (I > 1024); with
  // G = 352 and G = I groups span two dW tiles (the partial sums of both must be added).
  const big = makeLayer(rng, 288, 1056, 4, 32);
  checkAgainstTwin(b, rng, big, 9, { bias: true, accumulateDx: true }, 'bits=4 288x1056 G=32 N=9');
  for (const G of [352, 1056]) {
    checkAgainstTwin(b, rng, makeLayer(rng, 32, 1056, 3, G), 5, { bias: false, accumulateDx: false }, `bits=3 32x1056 G=${G} N=5`);
  }
});

forEachBackend('packed linear: dscales and dx against finite differences of sum(out * R)', (b) => {
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
    withPacked(b, L, (p) => {
      const gx = b.alloc('f32', N * I), gscales = b.alloc('f32', O * (I / G)), gout = b.alloc('f32', N * O), gbias = b.upload(bias.f32);
      const load = (): void => {
        b.be.upload(gx, x.f32);
        b.be.upload(gscales, L.scales.f32);
      };
      const loss = (): number => {
        load();
        b.be.packedLinearForward(gout, gx, p.w, gscales, gbias, N, p.tile, null);
        const out = b.download(gout);
        let s = 0;
        for (let k = 0; k < out.length; k++) s += out[k]! * R.f32[k]!;
        return s;
      };
      const dx = b.alloc('f32', N * I), ds = b.alloc('f32', O * (I / G));
      load();
      b.be.packedLinearBackward(dx, ds, b.upload(R.f32), gx, p.w, gscales, N, false, p.tile, p.dwTile, null);
      // The loss is linear in scales and in x: central differences are exact up to f32 noise.
      checkGrad(loss, L.scales.f32, b.download(ds), { eps: 1e-2, atol: 2e-2, rtol: 1e-3, samples: 24, what: `dscales bits=${bits} G=${G}` });
      checkGrad(loss, x.f32, b.download(dx), { eps: 1e-2, atol: 2e-3, rtol: 1e-3, samples: 24, what: `dx bits=${bits} G=${G}` });
    });
  }
});

/** W_hat (O, I) as the backend's packed linears form it: the CPU's dequantizePacked, CUDA's dequantize kernel. */
function dequantizedOn(b: OnBackend, w: PackedArray, scales: unknown): Float32Array {
  const { O, I, G } = w;
  if (b.name === 'cpu') {
    const out = Tensor.zeros([O, I]);
    dequantizePacked(out, w as PackedWeight, (scales as Tensor).view([O, I / G]));
    return out.f32;
  }
  const out = b.alloc('f32', O * I);
  dequantizeGptqCuda(out as DeviceArray, w as PackedWeightCuda, scales as DeviceArray);
  return b.download(out);
}

forEachBackend('packed linear: clamped scales are clamped in the forward and straight-through in dscales', (b) => {
  const rng = new Rng(61);
  const L = makeLayer(rng, 32, 64, 4, 32);
  L.scales.f32[0] = -1; // clamps to 1e-4
  L.scales.f32[1] = 5e4; // clamps to 1e4
  withPacked(b, L, (p) => {
    const scales = b.upload(L.scales.f32);
    const W = dequantizedOn(b, p.w, scales);
    const z0 = L.w.zeros[0]!;
    const z1 = L.w.zeros[1]!;
    assert.equal(W[0], Math.fround((L.q[0]! - z0) * Math.fround(1e-4)));
    assert.equal(W[32], Math.fround((L.q[32]! - z1) * 1e4));
    // dscales[0, 0] = sum over the group of (q - z) * dW_hat: the same as for an in-range scale.
    const x = randn(rng, [5, 64]);
    const dout = randn(rng, [5, 32]);
    const ds = b.alloc('f32', 32 * 2);
    b.be.packedLinearBackward(null, ds, b.upload(dout.f32), b.upload(x.f32), p.w, scales, 5, false, p.tile, p.dwTile, null);
    let want = 0;
    for (let n = 0; n < 5; n++) {
      for (let i = 0; i < 32; i++) want += (L.q[i]! - z0) * dout.f32[n * 32]! * x.f32[n * 64 + i]!;
    }
    const got = b.download(ds)[0]!;
    assertClose([got], [want], { atol: 1e-4, rtol: 1e-5, what: 'dscales of a clamped scale' });
    assert.notEqual(got, 0);
  });
});

// ---- The CUDA wrappers (src/quant/cuda/gptq.ts) on layouts beyond a checkpoint's: bit for bit.

/** Codes, zero points and scales of a layer of any O (not packed: the cases pack them). */
interface Codes {
  O: number;
  I: number;
  bits: number;
  G: number;
  q: Uint8Array; // (O, I)
  zeros: Uint8Array; // (O, I/G)
  scales: Float32Array; // (O, I/G)
}

/** Random codes, zero points and scales (some below 1e-4 and above 1e4, to hit the clamp). */
function randomCodes(rng: Rng, O: number, I: number, bits: number, G: number): Codes {
  const qm = qmax(bits);
  const groups = (O * I) / G;
  const q = Uint8Array.from({ length: O * I }, () => rng.int(0, qm + 1));
  for (let k = 0; k < q.length; k += 11) q[k] = qm; // the top code sets every bit of its field
  const zeros = Uint8Array.from({ length: groups }, () => rng.int(0, qm + 1));
  const scales = Float32Array.from({ length: groups }, () => {
    const r = rng.next();
    if (r < 0.05) return 1e-6;
    if (r < 0.1) return 5e-5; // below the clamp, close to it
    if (r < 0.13) return 3e4;
    if (r < 0.16) return 1.2e4;
    return 0.01 + 0.2 * rng.next();
  });
  return { O, I, bits, G, q, zeros, scales };
}

/** The device arrays of one CUDA case, typed, with u8 uploads (freed with the case). */
interface Device {
  alloc(dtype: DType, length: number): DeviceArray;
  upload(data: Float32Array | Int32Array | Uint8Array): DeviceArray;
}

function deviceOf(b: OnBackend): Device {
  return {
    alloc: (dtype, length) => b.alloc(dtype, length) as DeviceArray,
    upload(data) {
      const a = b.alloc(data instanceof Float32Array ? 'f32' : data instanceof Int32Array ? 'i32' : 'u8', data.length);
      b.be.upload(a, data);
      return a as DeviceArray;
    },
  };
}

function uploadCodes(s: Device, L: Codes): PackedWeightCuda {
  return { O: L.O, I: L.I, bits: L.bits, G: L.G, qweight: s.upload(packQweight(L.q, L.O, L.I, L.bits)), zeros: s.upload(L.zeros) };
}

/** W_hat (O, I) by the reference route: unpack the packed codes, then primitives.dequantize. */
function referenceWeights(L: Codes): Float32Array {
  const codes = unpackQweight(packQweight(L.q, L.O, L.I, L.bits), L.O, L.I, L.bits);
  assert.deepEqual(codes, L.q, 'TS pack -> unpack round trip');
  return dequantize(codes, L.scales, Float32Array.from(L.zeros), L.O, L.I, L.bits, L.G);
}

/** dscales0 + Σ_{i in g} (q − z) · dW over the tile, in f64 per group, as the twin reduces. */
function referenceScaleGrad(L: Codes, dscales0: Float32Array, dW: Float32Array, t: GptqTile): Float32Array {
  const ds = dscales0.slice();
  const groups = L.I / L.G;
  for (let r = 0; r < t.rows; r++) {
    const o = t.o0 + r;
    for (let g = t.i0 / L.G; g < (t.i0 + t.cols) / L.G; g++) {
      const z = L.zeros[o * groups + g]!;
      let s = 0;
      for (let i = g * L.G; i < (g + 1) * L.G; i++) s += (L.q[o * L.I + i]! - z) * dW[r * t.cols + (i - t.i0)]!;
      ds[o * groups + g] = Math.fround(ds[o * groups + g]! + s);
    }
  }
  return ds;
}

function tileOf(src: Float32Array, I: number, t: GptqTile): Float32Array {
  const out = new Float32Array(t.rows * t.cols);
  for (let r = 0; r < t.rows; r++) out.set(src.subarray((t.o0 + r) * I + t.i0, (t.o0 + r) * I + t.i0 + t.cols), r * t.cols);
  return out;
}

// [O, I, G] per bit width: I a whole number of packing units (16 / 32 / 8 / 4 values for 2 / 3 /
// 4 / 8 bits), not always a multiple of 32; G from 1 (and odd) to I. The wide ones cross the
// scale-gradient kernel's 256-column chunks: several spans of whole groups, and groups wider
// than a chunk (384, 512, 608: summed across chunks).
const CUDA_LAYOUTS: Record<number, [number, number, number][]> = {
  2: [[1, 16, 16], [7, 48, 3], [33, 80, 16], [3, 160, 32], [9, 512, 64]],
  3: [[1, 32, 32], [7, 96, 3], [33, 96, 96], [5, 160, 32], [2, 64, 1], [3, 608, 608]],
  4: [[1, 8, 8], [7, 24, 3], [33, 40, 8], [3, 96, 32], [37, 1024, 512], [5, 768, 384]],
  8: [[1, 4, 4], [7, 12, 3], [33, 20, 5], [3, 64, 64]],
};

forEachCudaBackend('gptq CUDA dequantize (f32, bf16, tiles) matches the TS unpack + dequantize bit for bit, every bit width', (b) => {
  const s = deviceOf(b);
  const rng = new Rng(61);
  for (const bits of [2, 3, 4, 8]) {
    for (const [O, I, G] of CUDA_LAYOUTS[bits]!) {
      const what = `bits=${bits} O=${O} I=${I} G=${G}`;
      const L = randomCodes(rng, O, I, bits, G);
      const want = referenceWeights(L);
      const w = uploadCodes(s, L), scales = s.upload(L.scales);
      const out = s.upload(new Float32Array(O * I).fill(NaN));
      dequantizeGptqCuda(out, w, scales);
      assertBitExact(downloadDevice<Float32Array>(out), want, `${what} f32`);
      const out16 = s.alloc('bf16', O * I);
      dequantizeGptqCuda(out16, w, scales);
      assertBitExact(downloadDevice<Uint16Array>(out16), Uint16Array.from(want, (x) => f32ToBf16Ref(x)), `${what} bf16`);
      // a tile that starts and ends inside words (and inside 3-bit units)
      const o0 = rng.int(0, O), i0 = rng.int(0, I);
      const t: GptqTile = { o0, rows: rng.int(1, O - o0 + 1), i0, cols: rng.int(1, I - i0 + 1) };
      const outT = s.alloc('f32', t.rows * t.cols);
      dequantizeGptqCuda(outT, w, scales, t);
      assertBitExact(downloadDevice<Float32Array>(outT), tileOf(want, I, t), `${what} tile ${JSON.stringify(t)}`);
    }
  }
});

forEachCudaBackend('gptq CUDA pack -> dequant round trip returns the codes (scale 1, zero 0), straddling 3-bit values included', (b) => {
  const s = deviceOf(b);
  const rng = new Rng(62);
  for (const bits of [2, 3, 4, 8]) {
    const O = 5, I = bits === 3 ? 96 : 32, G = I;
    const qm = qmax(bits);
    const q = Uint8Array.from({ length: O * I }, (_, k) => (k % 7 === 0 ? qm : rng.int(0, qm + 1)));
    const w: PackedWeightCuda = { O, I, bits, G, qweight: s.upload(packQweight(q, O, I, bits)), zeros: s.upload(new Uint8Array(O)) };
    const out = s.alloc('f32', O * I);
    dequantizeGptqCuda(out, w, s.upload(new Float32Array(O).fill(1)));
    assertBitExact(downloadDevice<Float32Array>(out), Float32Array.from(q), `bits=${bits} codes`);
  }
});

forEachCudaBackend('gptq CUDA step-size gradient matches the twin: whole matrix, row and group tiles, accumulating', (b) => {
  const s = deviceOf(b);
  const rng = new Rng(63);
  for (const bits of [2, 3, 4, 8]) {
    for (const [O, I, G] of CUDA_LAYOUTS[bits]!) {
      const what = `bits=${bits} O=${O} I=${I} G=${G}`;
      const L = randomCodes(rng, O, I, bits, G);
      const w = uploadCodes(s, L);
      const groups = I / G;
      const whole: GptqTile = { o0: 0, rows: O, i0: 0, cols: I };
      const dW = randn(rng, [O, I]).f32, ds0 = randn(rng, [O, groups]).f32;
      const dds = s.upload(ds0);
      gptqScaleGradCuda(dds, s.upload(dW), w);
      const want = referenceScaleGrad(L, ds0, dW, whole);
      assertBitExact(downloadDevice<Float32Array>(dds), want, `${what} dscales`);
      // a tile of rows and whole groups, accumulated on top
      const g0 = rng.int(0, groups), o0 = rng.int(0, O);
      const t: GptqTile = { o0, rows: rng.int(1, O - o0 + 1), i0: g0 * G, cols: rng.int(1, groups - g0 + 1) * G };
      const dWt = randn(rng, [t.rows, t.cols]).f32;
      gptqScaleGradCuda(dds, s.upload(dWt), w, t);
      assertBitExact(downloadDevice<Float32Array>(dds), referenceScaleGrad(L, want, dWt, t), `${what} tile ${JSON.stringify(t)}`);
    }
  }
});

forEachCudaBackend('gptq CUDA on checkpoint layouts: dequantizePackedRef and packedLinearBackwardRef dscales, bit for bit', (b) => {
  const s = deviceOf(b);
  const rng = new Rng(64);
  for (const [bits, O, I, G, N] of [[2, 32, 64, 32, 3], [3, 64, 96, 32, 5], [4, 32, 128, 128, 2], [8, 32, 32, 16, 7]] as const) {
    const what = `bits=${bits} O=${O} I=${I} G=${G}`;
    const L = randomCodes(rng, O, I, bits, G);
    const pw = packWeight(L.q, L.zeros, O, I, bits, G);
    const scales = Tensor.fromF32(L.scales, [O, I / G]);
    const want = Tensor.zeros([O, I]);
    dequantizePackedRef(want, pw, scales);
    const w = uploadPackedWeight(pw);
    try {
      const out = s.alloc('f32', O * I);
      dequantizeGptqCuda(out, w, s.upload(L.scales));
      assertBitExact(downloadDevice<Float32Array>(out), want.f32, `${what} W_hat`);
      // E2E-QP: dscales of the twin's backward vs the kernel on the same dW = doutᵀ x
      const x = randn(rng, [N, I]), dout = randn(rng, [N, O]);
      const dscales = randn(rng, [O, I / G]);
      const dds = s.upload(dscales.f32);
      packedLinearBackwardRef(null, dscales, dout, x, pw, scales);
      const dW = Tensor.zeros([O, I]);
      matmulRef(dW, dout, x, { transA: true });
      gptqScaleGradCuda(dds, s.upload(dW.f32), w);
      assertBitExact(downloadDevice<Float32Array>(dds), dscales.f32, `${what} dscales`);
    } finally {
      freePackedWeightCuda(w);
    }
  }
});

forEachCudaBackend('gptq CUDA wrappers: argument errors name the op and argument', (b) => {
  const s = deviceOf(b);
  const O = 3, I = 32, bits = 4, G = 8;
  const w: PackedWeightCuda = { O, I, bits, G, qweight: s.alloc('i32', (I / 8) * O), zeros: s.upload(new Uint8Array(O * 4)) };
  const scales = s.upload(new Float32Array(O * 4).fill(1)), out = s.alloc('f32', O * I);
  assert.throws(() => dequantizeGptqCuda(out, { ...w, bits: 5 }, scales), /dequantizeGptqCuda: w.bits must be 2, 3, 4 or 8, got 5/);
  assert.throws(() => dequantizeGptqCuda(out, { ...w, G: 5 }, scales), /group size w.G = 5 must divide in_features w.I = 32/);
  assert.throws(() => dequantizeGptqCuda(out, { ...w, I: 36, G: 4 }, scales), /dequantizeGptqCuda: w.I: gptq-w4 packs values in units of 8/);
  assert.throws(() => dequantizeGptqCuda(out, { ...w, bits: 3, I: 16 }, scales), /w.I: gptq-w3 packs values in units of 32/);
  assert.throws(() => dequantizeGptqCuda(out, { ...w, qweight: s.alloc('i32', 5) }, scales), /dequantizeGptqCuda: w.qweight: expected 12 elements/);
  assert.throws(() => dequantizeGptqCuda(out, { ...w, zeros: s.alloc('i32', 12) }, scales), /w.zeros: expected a u8 device array/);
  assert.throws(() => dequantizeGptqCuda(out, w, s.alloc('f32', 5)), /dequantizeGptqCuda: scales: expected 12 elements \(O=3, I\/G=4\)/);
  assert.throws(() => dequantizeGptqCuda(s.alloc('i32', O * I), w, scales), /dequantizeGptqCuda: out: expected an f32 or bf16 device array, got i32/);
  assert.throws(() => dequantizeGptqCuda(out, w, scales, { o0: 2, rows: 2, i0: 0, cols: 32 }), /tile rows \[2, 4\) exceed O = 3/);
  assert.throws(() => dequantizeGptqCuda(out, w, scales, { o0: 0, rows: 1, i0: 0, cols: 32 }), /out: expected 32 elements \(rows=1, cols=32\)/);
  const dW = s.alloc('f32', O * I);
  assert.throws(() => gptqScaleGradCuda(scales, dW, w, { o0: 0, rows: 3, i0: 4, cols: 8 }), /gptqScaleGradCuda: tile columns \[4, 12\) must start and end on group boundaries/);
  assert.throws(() => gptqScaleGradCuda(scales, dW, w, { o0: 0, rows: 3, i0: 0, cols: 8 }), /gptqScaleGradCuda: dW: expected 24 elements/);
  assert.throws(() => gptqScaleGradCuda(scales, deviceView(scales, 0, 8), w, { o0: 0, rows: 1, i0: 0, cols: 8 }), /gptqScaleGradCuda: dscales overlaps dW/);
  assert.throws(() => uploadPackedWeight({ O: 3, I: 32, bits: 4, G: 8, qweight: new Int32Array(12), zeros: new Uint8Array(12) }), /uploadPackedWeight/);
});

// ---- The host op (CPU).

test('dequantizePacked equals dequantize(unpackQweight(...)) bit for bit, every kernel family', () => {
  const rng = new Rng(41);
  for (const kernel of KERNELS) {
    withKernel(kernel, () => {
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
    });
  }
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
