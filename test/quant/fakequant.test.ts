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
import { f32ToBf16Ref } from '../../src/engine/dtype.js';
import { downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { adamwStepRef } from '../../src/ops/ref/adamw.js';
import { assertClose, checkGrad, randn } from '../util.js';
import { assertBitExact } from '../cuda/backends.js';
import { forEachBackend, type OnBackend } from '../ops/spec.js';

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

interface Case {
  w: Tensor;
  scale: Tensor;
  zero: Tensor;
}

/** Σ|term| of each group's dscale and dzero sums in one backward of dout, as the twin forms them. */
function groupSumMagnitudes(c: Case, dout: Tensor, bits: number, G: number): { s: Float64Array; z: Float64Array } {
  const qm = qmax(bits);
  const groups = c.scale.size;
  const mags = { s: new Float64Array(groups), z: new Float64Array(groups) };
  for (let g = 0; g < groups; g++) {
    const s = clampScale(c.scale.f32[g]!);
    const zr = roundZero(c.zero.f32[g]!, qm);
    for (let e = g * G; e < (g + 1) * G; e++) {
      const u = Math.fround(c.w.f32[e]! / s);
      const r = roundHalfEven(u);
      const code = r + zr;
      const inRange = code >= 0 && code <= qm;
      const q = code < 0 ? 0 : qm;
      mags.s[g]! += Math.abs(dout.f32[e]! * (inRange ? r - u : q - zr));
      mags.z[g]! += inRange ? 0 : Math.abs(dout.f32[e]! * s);
    }
  }
  return mags;
}

/**
 * Group sums (dscale, dzero) against the twin's. Tolerance: CUDA sums each group in the twin's
 * order, bit for bit; the CPU reassociates, within the summation error bound
 * (G + 1) · 2^-23 · Σ|term| of each group (magnitude: the terms and the value accumulated into).
 */
function assertGroupSums(b: OnBackend, got: Float32Array, want: Float32Array, magnitude: Float64Array, G: number, what: string): void {
  if (b.name !== 'cpu') return assertBitExact(got, want, what);
  const tol = (G + 1) * 2 ** -23;
  for (let g = 0; g < want.length; g++) assertClose([got[g]!], [want[g]!], { atol: tol * magnitude[g]! + 1e-30, rtol: 0, what: `${what} [${g}]` });
}

/** The forward against the twin, bit for bit: into f32 over NaN, and on CUDA into bf16 (the twin's values rounded). */
function checkForward(b: OnBackend, c: Case, bits: number, G: number, what: string): void {
  const [O, I] = c.w.shape as [number, number];
  const ref = Tensor.zeros([O, I]);
  fakeQuantForwardRef(ref, c.w, c.scale, c.zero, bits, G);
  const w = b.upload(c.w.f32), scale = b.upload(c.scale.f32), zero = b.upload(c.zero.f32);
  const out = b.upload(new Float32Array(O * I).fill(NaN));
  b.be.fakeQuantForward(out, w, scale, zero, O, I, bits, G);
  assertBitExact(b.download(out), ref.f32, `forward ${what}`);
  if (b.name === 'cpu') return;
  const out16 = b.alloc('bf16', O * I);
  b.be.fakeQuantForward(out16, w, scale, zero, O, I, bits, G);
  assertBitExact(downloadDevice<Uint16Array>(out16 as DeviceArray), Uint16Array.from(ref.f32, (x) => f32ToBf16Ref(x)), `forward to bf16 ${what}`);
}

/**
 * The straight-through backward into gradients pre-filled with random values (every fifth
 * weight gradient -0 where negativeZeros: clipped elements turn it into +0): dw bit for bit,
 * dscale and dzero by assertGroupSums.
 */
function checkBackward(b: OnBackend, rng: Rng, c: Case, bits: number, G: number, what: string, negativeZeros: boolean): void {
  const [O, I] = c.w.shape as [number, number];
  const dout = randn(rng, [O, I]);
  const dw = randn(rng, [O, I]), ds = randn(rng, [O, I / G]), dz = randn(rng, [O, I / G]);
  if (negativeZeros) for (let i = 0; i < dw.size; i += 5) dw.f32[i] = -0;
  const mags = groupSumMagnitudes(c, dout, bits, G);
  for (let g = 0; g < ds.size; g++) {
    mags.s[g]! += Math.abs(ds.f32[g]!);
    mags.z[g]! += Math.abs(dz.f32[g]!);
  }
  const gdw = b.upload(dw.f32), gds = b.upload(ds.f32), gdz = b.upload(dz.f32);
  fakeQuantBackwardRef(dw, ds, dz, dout, c.w, c.scale, c.zero, bits, G);
  b.be.fakeQuantBackward(gdw, gds, gdz, b.upload(dout.f32), b.upload(c.w.f32), b.upload(c.scale.f32), b.upload(c.zero.f32), O, I, bits, G, null);
  assertBitExact(b.download(gdw), dw.f32, `dw ${what}`);
  assertGroupSums(b, b.download(gds), ds.f32, mags.s, G, `dscale ${what}`);
  assertGroupSums(b, b.download(gdz), dz.f32, mags.z, G, `dzero ${what}`);
}

for (const bits of BITS) {
  forEachBackend(`fake quant ${bits}-bit: the forward matches the twin bit for bit`, (b) => {
    const rng = new Rng(100 + bits);
    for (const O of OS) {
      for (const [I, G] of IG) checkForward(b, makeCase(rng, O, I, G, bits), bits, G, `O=${O} I=${I} G=${G}`);
    }
  });

  forEachBackend(`fake quant ${bits}-bit: the backward matches the twin and accumulates`, (b) => {
    const rng = new Rng(200 + bits);
    for (const O of OS) {
      for (const [I, G] of IG) checkBackward(b, rng, makeCase(rng, O, I, G, bits), bits, G, `O=${O} I=${I} G=${G}`, false);
    }
  });

  test(`fake quant ${bits}-bit: native quantize is bit-exact with the twin; dequantize(quantize()) is the forward exactly`, () => {
    const rng = new Rng(100 + bits); // the cases of the forward spec
    for (const O of OS) {
      for (const [I, G] of IG) {
        const { w, scale, zero } = makeCase(rng, O, I, G, bits);
        const ref = Tensor.zeros([O, I]);
        fakeQuantForwardRef(ref, w, scale, zero, bits, G);
        const qRef = quantize(w.f32, scale.f32, zero.f32, O, I, bits, G);
        const qNat = new Uint8Array(O * I).fill(77);
        quantizeNative(qNat, w.f32, scale.f32, zero.f32, O, I, bits, G);
        assertBitExact(qNat, qRef, `quantize O=${O} I=${I} G=${G}`);
        const deq = dequantize(qRef, scale.f32, zero.f32, O, I, bits, G);
        assertBitExact(deq, ref.f32, `dequantize(quantize()) O=${O} I=${I} G=${G}`);
      }
    }
  });
}

/** (O, I, G) of the branch cases: odd shapes, G = 1, and 74 groups (three tiles of the CUDA backward, two chunks of each group). */
const BRANCH_LAYOUTS: [number, number, number][] = [
  [1, 64, 64],
  [3, 96, 32],
  [17, 130, 65],
  [3, 51, 17],
  [7, 7, 1],
  [17, 40, 20],
  [37, 256, 128],
];

forEachBackend('fake quant: forward and backward match the twins on every branch (clipping, scale clamps, ties)', (b) => {
  const rng = new Rng(3);
  for (const bits of BITS) {
    for (const [O, I, G] of BRANCH_LAYOUTS) {
      const what = `bits=${bits} O=${O} I=${I} G=${G}`;
      const c = branchCase(rng, O, I, G, bits);
      checkForward(b, c, bits, G, what);
      checkBackward(b, rng, c, bits, G, what, true);
    }
  }
});

// Tolerances: CUDA fuses the two and is bit for bit with the twins; the CPU composes its
// backward (dw bit for bit) with its AdamW step (two ulps of the twin: test/ops/adamw.test.ts),
// and its group sums are within assertGroupSums's bound, summed over the steps.
forEachBackend('fake quant backward with the weight AdamW step: STE into a zeroed gradient, then AdamW, as the twins', (b) => {
  const rng = new Rng(13);
  const h = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  const ULP2 = 2 ** -22;
  for (const [O, I, G, bits] of [[3, 96, 32, 2], [17, 130, 65, 3], [37, 256, 128, 4], [7, 7, 1, 2]] as [number, number, number, number][]) {
    const what = `bits=${bits} O=${O} I=${I} G=${G}`;
    const c = branchCase(rng, O, I, G, bits);
    const ref = { w: c.w.clone(), m: randn(rng, [O, I], 0.01), v: Tensor.zeros([O, I]) };
    for (let i = 0; i < ref.v.size; i++) ref.v.f32[i] = rng.next() * 1e-4;
    const w = b.upload(ref.w.f32), m = b.upload(ref.m.f32), v = b.upload(ref.v.f32);
    const scale = b.upload(c.scale.f32), zero = b.upload(c.zero.f32);
    const ds = randn(rng, [O, I / G]), dz = randn(rng, [O, I / G]);
    const gds = b.upload(ds.f32), gdz = b.upload(dz.f32);
    const gdsNoDw = b.upload(ds.f32), gdzNoDw = b.upload(dz.f32);
    const mags = { s: Float64Array.from(ds.f32, Math.abs), z: Float64Array.from(dz.f32, Math.abs) };
    const scalars = b.be.adamwScalars(), scratch = b.be.fakeQuantScratch(O * I);
    try {
      for (let step = 1; step <= 2; step++) {
        const g = randn(rng, [O, I]);
        for (let i = 0; i < g.size; i += 7) g.f32[i] = -0; // an in-range -0 reaches AdamW as +0
        const dout = b.upload(g.f32);
        // without a weight gradient (weights not trained): only the step-size and zero-point sums
        b.be.fakeQuantBackward(null, gdsNoDw, gdzNoDw, dout, b.upload(b.download(w)), scale, zero, O, I, bits, G, scratch.value);
        const stepMags = groupSumMagnitudes({ ...c, w: ref.w }, g, bits, G);
        stepMags.s.forEach((x, i) => (mags.s[i]! += x));
        stepMags.z.forEach((x, i) => (mags.z[i]! += x));
        const grad = Tensor.zeros([O, I]);
        fakeQuantBackwardRef(grad, ds, dz, g, ref.w, c.scale, c.zero, bits, G);
        adamwStepRef(ref.w, grad, ref.m, ref.v, { ...h, step });
        b.be.writeAdamWScalars(scalars.value, { ...h, step });
        b.be.fakeQuantBackwardAdamw(w, m, v, scalars.value, gds, gdz, dout, scale, zero, O, I, bits, G, scratch.value);
      }
    } finally {
      scratch.free();
      scalars.free();
    }
    for (const [name, got, want] of [['weight', w, ref.w], ['m', m, ref.m], ['v', v, ref.v]] as const) {
      if (b.name === 'cpu') assertClose(b.download(got), want.f32, { atol: 1e-30, rtol: ULP2, what: `${name} ${what}` });
      else assertBitExact(b.download(got), want.f32, `${name} ${what}`);
    }
    assertGroupSums(b, b.download(gds), ds.f32, mags.s, G, `dscale ${what}`);
    assertGroupSums(b, b.download(gdz), dz.f32, mags.z, G, `dzero ${what}`);
    assertGroupSums(b, b.download(gdsNoDw), ds.f32, mags.s, G, `dscale without dw ${what}`);
    assertGroupSums(b, b.download(gdzNoDw), dz.f32, mags.z, G, `dzero without dw ${what}`);
  }
});

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

/**
 * A weight (O, I) with scale/zero exercising every branch: min-max init, scales shrunk so
 * codes clip, scales below 1e-4 and above 1e4, zeros off the integers and outside [0, qmax],
 * and groups of exact ties (scale 0.25, half-integer codes).
 */
function branchCase(rng: Rng, O: number, I: number, G: number, bits: number): Case {
  const w = randn(rng, [O, I]);
  const groups = (O * I) / G;
  const qm = qmax(bits);
  const tie = new Array<boolean>(groups).fill(false);
  for (let g = 0; g < groups; g++) {
    if (rng.next() < 0.15) {
      tie[g] = true;
      for (let e = g * G; e < (g + 1) * G; e++) w.f32[e] = (rng.int(-8, 8) + 0.5) * 0.25;
    }
  }
  const init = minMaxInit(w.f32, O, I, bits, G);
  for (let g = 0; g < groups; g++) {
    const r = rng.next();
    if (tie[g]) init.scale[g] = 0.25;
    else if (r < 0.15) init.scale[g]! *= 0.4;
    else if (r < 0.2) init.scale[g] = 1e-6;
    else if (r < 0.25) init.scale[g] = 2e4;
    if (r >= 0.25 && r < 0.35) init.zero[g] = init.zero[g]! + rng.next() - 0.5;
    else if (r >= 0.35 && r < 0.4) init.zero[g] = rng.next() < 0.5 ? -2.5 : qm + 3;
    else if (r >= 0.4 && r < 0.45) init.zero[g] = 2.5; // a zero-point tie
  }
  return { w, scale: Tensor.fromF32(init.scale, [O, I / G]), zero: Tensor.fromF32(init.zero, [O, I / G]) };
}
