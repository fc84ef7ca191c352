// Fake quantization: the native kernels against the TypeScript twins (forward and quantize
// bit-exact, backward to rounding) on ordinary and odd shapes, fake quant as
// dequantize(quantize()), and the straight-through gradients against central differences of
// the straight-through surrogate.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import {
  clampScale,
  dequantize,
  fakeQuantBackwardRef,
  fakeQuantForwardRef,
  minMaxInit,
  qmax,
  quantize,
  roundHalfEven,
  roundZero,
} from '../../src/quant/primitives.js';
import { fakeQuantBackward, fakeQuantForward, quantizeNative } from '../../src/quant/fakequant.js';
import { assertClose, checkGrad, randn } from '../util.js';

const BITS = [2, 3, 4, 8] as const;
/** (I, G) combinations: per-group, per-channel (G = I), odd groups, G = 1. */
const IG: [number, number][] = [
  [64, 64],
  [96, 32],
  [130, 65],
  [128, 128],
  [51, 17],
  [7, 1],
  [40, 20],
];
const OS = [1, 3, 17];

function assertBitExact(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    if (!Object.is(actual[i], expected[i])) assert.fail(`${what}: element ${i}: got ${actual[i]}, expected ${expected[i]}`);
  }
}

/**
 * A weight (O, I) with scale/zero that exercise every branch: min-max init perturbed (scales
 * shrunk so codes clip, zeros moved off the integers and outside [0, qmax]), groups with scales
 * below 1e-4 and above 1e4, groups of exact ties (power-of-two scale, half-integer codes) and
 * groups of near-ties under arbitrary scales.
 */
function makeCase(rng: Rng, O: number, I: number, G: number, bits: number): { w: Tensor; scale: Tensor; zero: Tensor } {
  const qm = qmax(bits);
  const w = randn(rng, [O, I], 0.05);
  const groups = (O * I) / G;
  const { scale, zero } = minMaxInit(w.f32, O, I, bits, G);
  for (let g = 0; g < groups; g++) {
    const kind = rng.int(0, 8);
    if (kind === 0) scale[g] = scale[g]! * (0.3 + 0.5 * rng.next()); // more clipping
    if (kind === 1) zero[g] = zero[g]! + (rng.next() - 0.5) * 3; // fractional, maybe out of range
    if (kind === 2) zero[g] = rng.next() < 0.5 ? -2.7 : qm + 1.6; // out of [0, qmax]
    if (kind === 3) scale[g] = 3e-5; // below the scale clamp
    if (kind === 4) scale[g] = 2e4; // above the scale clamp
    if (kind === 5) {
      // exact ties: w / s = k + 0.5 exactly
      scale[g] = 2 ** -6;
      zero[g] = Math.floor(qm / 2) + 0.5; // a tie in the zero rounding too
      for (let e = g * G; e < (g + 1) * G; e++) w.f32[e] = (rng.int(-qm, qm) + 0.5) * 2 ** -6;
    }
    if (kind === 6) {
      // near-ties under an arbitrary scale: w / s lands on or next to k + 0.5
      for (let e = g * G; e < (g + 1) * G; e++) w.f32[e] = (rng.int(-qm, qm) + 0.5) * scale[g]!;
    }
  }
  return { w, scale: Tensor.fromF32(scale, [O, I / G]), zero: Tensor.fromF32(zero, [O, I / G]) };
}

for (const bits of BITS) {
  test(`fake quant ${bits}-bit: native forward and quantize are bit-exact with the twin`, () => {
    const rng = new Rng(100 + bits);
    for (const O of OS) {
      for (const [I, G] of IG) {
        const { w, scale, zero } = makeCase(rng, O, I, G, bits);
        const ref = Tensor.zeros([O, I]);
        const got = Tensor.zeros([O, I]);
        got.f32.fill(NaN);
        fakeQuantForwardRef(ref, w, scale, zero, bits, G);
        fakeQuantForward(got, w, scale, zero, bits, G);
        assertBitExact(got.f32, ref.f32, `forward O=${O} I=${I} G=${G}`);

        const qRef = quantize(w.f32, scale.f32, zero.f32, O, I, bits, G);
        const qNat = new Uint8Array(O * I).fill(77);
        quantizeNative(qNat, w.f32, scale.f32, zero.f32, O, I, bits, G);
        assertBitExact(qNat, qRef, `quantize O=${O} I=${I} G=${G}`);

        // Fake quant is dequantize(quantize()), with zero tolerance.
        const deq = dequantize(qRef, scale.f32, zero.f32, O, I, bits, G);
        assertBitExact(deq, ref.f32, `dequantize(quantize()) O=${O} I=${I} G=${G}`);
      }
    }
  });

  test(`fake quant ${bits}-bit: native backward matches the twin and accumulates`, () => {
    const rng = new Rng(200 + bits);
    for (const O of OS) {
      for (const [I, G] of IG) {
        const { w, scale, zero } = makeCase(rng, O, I, G, bits);
        const dout = randn(rng, [O, I]);
        // Non-zero starting gradients: backward must add to them.
        const dw0 = randn(rng, [O, I]);
        const ds0 = randn(rng, [O, I / G]);
        const dz0 = randn(rng, [O, I / G]);
        const [dwR, dsR, dzR] = [dw0.clone(), ds0.clone(), dz0.clone()];
        const [dwN, dsN, dzN] = [dw0.clone(), ds0.clone(), dz0.clone()];
        fakeQuantBackwardRef(dwR, dsR, dzR, dout, w, scale, zero, bits, G);
        fakeQuantBackward(dwN, dsN, dzN, dout, w, scale, zero, bits, G);
        const where = `O=${O} I=${I} G=${G}`;
        assertBitExact(dwN.f32, dwR.f32, `dw ${where}`);
        // Group sums are reassociated natively: bound the difference by the summation error
        // bound G * 2^-24 * Σ|term| (per implementation) of each group.
        const qm = qmax(bits);
        const groups = (O * I) / G;
        for (let g = 0; g < groups; g++) {
          const s = clampScale(scale.f32[g]!);
          const zr = roundZero(zero.f32[g]!, qm);
          let absS = Math.abs(ds0.f32[g]!);
          let absZ = Math.abs(dz0.f32[g]!);
          for (let e = g * G; e < (g + 1) * G; e++) {
            const u = Math.fround(w.f32[e]! / s);
            const r = roundHalfEven(u);
            const code = r + zr;
            const inRange = code >= 0 && code <= qm;
            const q = code < 0 ? 0 : qm;
            absS += Math.abs(dout.f32[e]! * (inRange ? r - u : q - zr));
            absZ += inRange ? 0 : Math.abs(dout.f32[e]! * s);
          }
          const tol = (G + 1) * 2 ** -23;
          assertClose([dsN.f32[g]!], [dsR.f32[g]!], { atol: tol * absS + 1e-30, rtol: 0, what: `dscale[${g}] ${where}` });
          assertClose([dzN.f32[g]!], [dzR.f32[g]!], { atol: tol * absZ + 1e-30, rtol: 0, what: `dzero[${g}] ${where}` });
        }
      }
    }
  });
}

/**
 * A point away from every kink of the straight-through surrogate: each element's pre-clamp
 * code c = round(u) + z_r is an integer at distance >= 1 from 0 and qmax (inside or outside),
 * and u sits within 0.4 of round(u). Some zero points lie outside [0, qmax].
 */
function makeSmoothPoint(rng: Rng, O: number, I: number, G: number, bits: number) {
  const qm = qmax(bits);
  const groups = (O * I) / G;
  const scale = new Float32Array(groups);
  const zero = new Float32Array(groups);
  const w = new Float32Array(O * I);
  for (let g = 0; g < groups; g++) {
    scale[g] = 0.01 + 0.04 * rng.next();
    const zint = rng.int(-2, qm + 3);
    zero[g] = zint + (rng.next() - 0.5) * 0.8;
    const zr = Math.min(Math.max(zint, 0), qm);
    for (let e = g * G; e < (g + 1) * G; e++) {
      let c: number;
      if (rng.next() < 0.7) c = rng.int(1, qm); // strictly inside (0, qmax)
      else c = rng.next() < 0.5 ? rng.int(-3, 0) : rng.int(qm + 1, qm + 4); // clipped
      w[e] = (c - zr + (rng.next() - 0.5) * 0.8) * scale[g]!;
    }
  }
  return { w, scale, zero };
}

for (const bits of BITS) {
  test(`fake quant ${bits}-bit: straight-through gradients match central differences of the surrogate`, () => {
    const rng = new Rng(300 + bits);
    const qm = qmax(bits);
    for (const [O, I, G] of [
      [3, 96, 32],
      [1, 130, 65],
      [17, 7, 7],
    ] as const) {
      const { w, scale, zero } = makeSmoothPoint(rng, O, I, G, bits);
      const groups = (O * I) / G;
      const dout = randn(rng, [O, I]);
      // The frozen straight-through offsets of the base point.
      const r1 = new Float64Array(O * I);
      const r2 = new Float64Array(groups);
      for (let g = 0; g < groups; g++) {
        r2[g] = roundZero(zero[g]!, qm) - zero[g]!;
        for (let e = g * G; e < (g + 1) * G; e++) {
          const u0 = Math.fround(w[e]! / scale[g]!);
          r1[e] = roundHalfEven(u0) - u0;
          const c = roundHalfEven(u0) + roundZero(zero[g]!, qm);
          assert.ok(c <= -1 || (c >= 1 && c <= qm - 1) || c >= qm + 1, 'the base point sits on a kink');
        }
      }
      // L = Σ dout · F(W, s, z), F = (clamp(W/s + r1 + z + r2, 0, qmax) - (z + r2)) · s, in f64.
      const loss = (): number => {
        let L = 0;
        for (let g = 0; g < groups; g++) {
          const s = scale[g]!;
          const zz = zero[g]! + r2[g]!;
          for (let e = g * G; e < (g + 1) * G; e++) {
            const x = Math.min(Math.max(w[e]! / s + r1[e]! + zz, 0), qm);
            L += dout.f32[e]! * (x - zz) * s;
          }
        }
        return L;
      };

      const wT = Tensor.fromF32(w, [O, I]);
      const sT = Tensor.fromF32(scale, [O, I / G]);
      const zT = Tensor.fromF32(zero, [O, I / G]);
      // The surrogate equals the fake-quant output at the base point.
      const out = Tensor.zeros([O, I]);
      fakeQuantForwardRef(out, wT, sT, zT, bits, G);
      let L0 = 0;
      for (let e = 0; e < O * I; e++) L0 += dout.f32[e]! * out.f32[e]!;
      assertClose([loss()], [L0], { atol: 1e-4, rtol: 1e-5, what: 'surrogate at the base point' });

      for (const impl of ['twin', 'native'] as const) {
        const dw = Tensor.zeros([O, I]);
        const ds = Tensor.zeros([O, I / G]);
        const dz = Tensor.zeros([O, I / G]);
        const backward = impl === 'twin' ? fakeQuantBackwardRef : fakeQuantBackward;
        backward(dw, ds, dz, dout, wT, sT, zT, bits, G);
        const where = `${impl} O=${O} I=${I} G=${G}`;
        checkGrad(loss, w, dw.f32, { eps: 1e-4, samples: 40, what: `dw ${where}` });
        checkGrad(loss, scale, ds.f32, { eps: 1e-5, what: `dscale ${where}` });
        checkGrad(loss, zero, dz.f32, { eps: 1e-3, what: `dzero ${where}` });
      }
    }
  });
}

test('fake quant: a hand-computed 2-bit group', () => {
  // s = 0.5, z = 1.4 -> z_r = 1; codes round(w/s) + 1 clipped to [0, 3].
  const w = Tensor.fromF32(new Float32Array([-1, -0.25, 0.25, 0.75, 2, -0.5]), [1, 6]);
  const scale = Tensor.fromF32(new Float32Array([0.5]), [1, 1]);
  const zero = Tensor.fromF32(new Float32Array([1.4]), [1, 1]);
  // u = -2, -0.5, 0.5, 1.5, 4, -1; round (ties to even) = -2, -0, 0, 2, 4, -1
  // codes = -1, 1, 1, 3, 5, 0 -> q = 0, 1, 1, 3, 3, 0 -> Ŵ = (q - 1) * 0.5
  const want = [-0.5, 0, 0, 1, 1, -0.5];
  for (const fwd of [fakeQuantForwardRef, fakeQuantForward]) {
    const out = Tensor.zeros([1, 6]);
    fwd(out, w, scale, zero, 2, 6);
    assert.deepEqual([...out.f32], want);
  }
  assert.deepEqual([...quantize(w.f32, scale.f32, zero.f32, 1, 6, 2, 6)], [0, 1, 1, 3, 3, 0]);
  // dout = 1: in range are elements 1, 2, 3, 5 (codes 1, 1, 3, 0); clipped 0 (code -1) and 4 (code 5).
  // ds = (r - u) over in-range + (q - z_r) over clipped = (0.5 - 0.5 + 0.5 + 0) + (-1 + 2) = 1.5
  // dz = -s per clipped element = -1
  const dout = Tensor.fromF32(new Float32Array(6).fill(1), [1, 6]);
  for (const bwd of [fakeQuantBackwardRef, fakeQuantBackward]) {
    const dw = Tensor.zeros([1, 6]);
    const ds = Tensor.zeros([1, 1]);
    const dz = Tensor.zeros([1, 1]);
    bwd(dw, ds, dz, dout, w, scale, zero, 2, 6);
    assert.deepEqual([...dw.f32], [0, 1, 1, 1, 0, 1]);
    assert.equal(ds.f32[0], 1.5);
    assert.equal(dz.f32[0], -1);
  }
});

test('fake quant: bad arguments are rejected with clear errors', () => {
  const w = Tensor.zeros([4, 12]);
  const s = Tensor.zeros([4, 3]);
  const z = Tensor.zeros([4, 3]);
  const out = Tensor.zeros([4, 12]);
  assert.throws(() => fakeQuantForward(out, w, s, z, 4, 5), /fakeQuantForward: group size G = 5 does not divide in_features I = 12/);
  assert.throws(() => fakeQuantForward(out, w, s, z, 9, 4), /fakeQuantForward: bits must be an integer in \[2, 8\]/);
  assert.throws(() => fakeQuantForward(out, w, s, z, 1, 4), /bits/);
  assert.throws(() => fakeQuantForward(out, w, Tensor.zeros([4, 4]), z, 4, 4), /fakeQuantForward: scale/);
  assert.throws(() => fakeQuantForward(Tensor.zeros([4, 11]), w, s, z, 4, 4), /fakeQuantForward: out/);
  assert.throws(
    () => fakeQuantBackward(Tensor.zeros([4, 12]), Tensor.zeros([4, 2]), z, out, w, s, z, 4, 4),
    /fakeQuantBackward: dscale/,
  );
  assert.throws(() => fakeQuantForwardRef(out, w, s, Tensor.zeros([3, 3]), 4, 4), /fakeQuantForwardRef: zero/);
  assert.throws(() => quantizeNative(new Uint8Array(47), w.f32, s.f32, z.f32, 4, 12, 4, 4), /quantizeNative: q has 47/);
  assert.throws(() => quantize(w.f32, s.f32, z.f32, 4, 12, 4, 7), /quantize: group size G = 7/);
  assert.throws(() => dequantize(new Uint8Array(48).fill(16), s.f32, z.f32, 4, 12, 4, 4), /dequantize: q\[0\] = 16 exceeds qmax = 15/);
});
