// Packed GPTQ weights on CUDA (src/quant/cuda/gptq.ts) on every backend of backends.ts (GPU when
// present, the CPU emulator of the kernel sources), bit for bit against the TypeScript
// references: dequantization (f32 and bf16, whole matrix and tiles) against
// primitives.dequantize on unpackQweight's codes and against the packed layer's twin
// dequantizePackedRef; the step-size gradient against the dscales reduction of
// packedLinearBackwardRef (src/quant/ref/packed-linear.ts) and its formula on odd layouts;
// pack -> dequant round trips; every bit width (3-bit 96-bit units included), group sizes from 1
// to I, odd O, I not a multiple of 32 where the packing allows; argument errors.
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { deviceView, downloadDevice, uploadDevice } from '../../src/engine/cuda.js';
import { f32ToBf16Ref } from '../../src/engine/dtype.js';
import { matmulRef } from '../../src/ops/ref/matmul.js';
import { packQweight, unpackQweight } from '../../src/quant/gptq-pack.js';
import { packWeight } from '../../src/quant/packed-linear.js';
import { dequantize, qmax } from '../../src/quant/primitives.js';
import { dequantizePackedRef, packedLinearBackwardRef } from '../../src/quant/ref/packed-linear.js';
import {
  dequantizeGptqCuda,
  freePackedWeightCuda,
  gptqScaleGradCuda,
  uploadPackedWeight,
  type GptqTile,
  type PackedWeightCuda,
} from '../../src/quant/cuda/gptq.js';
import { randn } from '../util.js';
import { assertBitExact, testOnBackends, type Scope } from './backends.js';

interface Layer {
  O: number;
  I: number;
  bits: number;
  G: number;
  q: Uint8Array; // (O, I)
  zeros: Uint8Array; // (O, I/G)
  scales: Float32Array; // (O, I/G)
}

/** Random codes, zero points and scales (some below 1e-4 and above 1e4, to hit the clamp). */
function randomLayer(rng: Rng, O: number, I: number, bits: number, G: number): Layer {
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

function upload(s: Scope, L: Layer): PackedWeightCuda {
  return { O: L.O, I: L.I, bits: L.bits, G: L.G, qweight: s.upload(packQweight(L.q, L.O, L.I, L.bits)), zeros: s.upload(L.zeros) };
}

/** W_hat (O, I) by the reference route: unpack the packed codes, then primitives.dequantize. */
function referenceWeights(L: Layer): Float32Array {
  const codes = unpackQweight(packQweight(L.q, L.O, L.I, L.bits), L.O, L.I, L.bits);
  assert.deepEqual(codes, L.q, 'TS pack -> unpack round trip');
  return dequantize(codes, L.scales, Float32Array.from(L.zeros), L.O, L.I, L.bits, L.G);
}

/** dscales0 + Σ_{i in g} (q − z) · dW over the tile, in f64 per group, as the twin reduces. */
function referenceScaleGrad(L: Layer, dscales0: Float32Array, dW: Float32Array, t: GptqTile): Float32Array {
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
const LAYOUTS: Record<number, [number, number, number][]> = {
  2: [[1, 16, 16], [7, 48, 3], [33, 80, 16], [3, 160, 32], [9, 512, 64]],
  3: [[1, 32, 32], [7, 96, 3], [33, 96, 96], [5, 160, 32], [2, 64, 1], [3, 608, 608]],
  4: [[1, 8, 8], [7, 24, 3], [33, 40, 8], [3, 96, 32], [37, 1024, 512], [5, 768, 384]],
  8: [[1, 4, 4], [7, 12, 3], [33, 20, 5], [3, 64, 64]],
};

testOnBackends('gptq dequantize (f32, bf16, tiles) matches the TS unpack + dequantize bit for bit, every bit width', (s) => {
  const rng = new Rng(61);
  for (const bits of [2, 3, 4, 8]) {
    for (const [O, I, G] of LAYOUTS[bits]!) {
      const what = `bits=${bits} O=${O} I=${I} G=${G}`;
      const L = randomLayer(rng, O, I, bits, G);
      const want = referenceWeights(L);
      const w = upload(s, L), scales = s.upload(L.scales);
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

testOnBackends('gptq pack -> dequant round trip returns the codes (scale 1, zero 0), straddling 3-bit values included', (s) => {
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

testOnBackends('gptq step-size gradient matches the twin: whole matrix, row and group tiles, accumulating', (s) => {
  const rng = new Rng(63);
  for (const bits of [2, 3, 4, 8]) {
    for (const [O, I, G] of LAYOUTS[bits]!) {
      const what = `bits=${bits} O=${O} I=${I} G=${G}`;
      const L = randomLayer(rng, O, I, bits, G);
      const w = upload(s, L);
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

testOnBackends('gptq on checkpoint layouts: dequantizePackedRef and packedLinearBackwardRef dscales, bit for bit', (s) => {
  const rng = new Rng(64);
  for (const [bits, O, I, G, N] of [[2, 32, 64, 32, 3], [3, 64, 96, 32, 5], [4, 32, 128, 128, 2], [8, 32, 32, 16, 7]] as const) {
    const what = `bits=${bits} O=${O} I=${I} G=${G}`;
    const L = randomLayer(rng, O, I, bits, G);
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

testOnBackends('gptq wrappers: argument errors name the op and argument', (s) => {
  const O = 3, I = 32, bits = 4, G = 8;
  const w: PackedWeightCuda = { O, I, bits, G, qweight: s.alloc('i32', (I / 8) * O), zeros: s.alloc('u8', O * 4) };
  uploadDevice(w.zeros, new Uint8Array(O * 4));
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
