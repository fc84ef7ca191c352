// Packed low-bit linear layer: a linear whose weights stay GPTQ-packed integer codes (2, 3, 4 or
// 8 bits) in memory, for E2E-QP (end-to-end training of the per-group scales of a quantized
// model, phase 2 of EfficientQAT) and for evaluating quantized models. Typed wrappers over
// native/cpu/qlinear.cc; the twin is src/quant/ref/packed-linear.ts.
//
// Weights. W_hat[o, i] = (q[o, i] - zeros[o, g]) * s_c[o, g], g = floor(i / G), where q are the
// frozen integer codes (packed in `qweight`, layout of src/quant/gptq-pack.ts packQweight),
// zeros the frozen integer zero points and s_c = clamp(scales, 1e-4, 1e4) — the clamp of the
// fake-quant op (src/quant/primitives.ts). Scales are the only trainable part. Their gradient
// treats that clamp as straight-through, as the fake-quant op does for s: dscales is
// sum_{i in g} (q - z) * dW_hat[o, i] whether or not s was clamped.
//
// The kernels never form W_hat whole: the forward and dx dequantize blocks of it straight into
// the GEMM micro-panels, and dscales forms dW_hat = doutᵀ x one tile at a time in scratch
// (memory O(tile) per thread). Results are identical for any thread count.
//
// Shapes: x (..., I) and out/dout (..., O) with all leading dims merged into rows (N); the
// layout needs I and O multiples of 32 and G dividing I (src/quant/formats.ts checkGptqLayout).
import { nativeFn } from '../engine/native.js';
import type { Tensor } from '../engine/tensor.js';
import { checkGptqLayout, gptqFormat, packedWords } from './formats.js';
import { packQweight } from './gptq-pack.js';
import { qmax } from './primitives.js';

/**
 * One quantized linear layer with frozen integers:
 * W_hat[o, i] = (q[o, i] − zeros[o, g]) · scales[o, g], g = floor(i / G).
 */
export interface PackedWeight {
  O: number;
  I: number;
  bits: number;
  G: number;
  /** GPTQ layout (I*bits/32, O), as packQweight writes it (3-bit: 32 values in 3 words). */
  qweight: Int32Array;
  /** (O, I/G) integer zero points. */
  zeros: Uint8Array;
}

/**
 * Packs integer codes q (O, I) and zero points (O, I/G) into a PackedWeight. Throws a RangeError
 * for a layout GPTQ cannot hold (bits not 2/3/4/8, I or O not a multiple of 32, G not dividing
 * I), wrong lengths, or a code / zero point above 2^bits - 1. The zero points are copied.
 */
export function packWeight(q: Uint8Array, zeros: Uint8Array, O: number, I: number, bits: number, G: number): PackedWeight {
  const op = 'packWeight';
  checkLayout(op, O, I, bits, G);
  if (q.length !== O * I) {
    throw new RangeError(`${op}: argument 'q' has ${q.length} elements, expected ${O * I} (O=${O}, I=${I})`);
  }
  const qm = qmax(bits);
  for (let k = 0; k < q.length; k++) {
    if (q[k]! > qm) throw new RangeError(`${op}: q[${Math.floor(k / I)}, ${k % I}] = ${q[k]} does not fit in ${bits} bits`);
  }
  checkZeros(op, zeros, O, I, bits, G);
  return { O, I, bits, G, qweight: packQweight(q, O, I, bits), zeros: zeros.slice() };
}

function checkLayout(op: string, O: number, I: number, bits: number, G: number): void {
  if (!Number.isInteger(bits)) throw new RangeError(`${op}: bits must be 2, 3, 4 or 8, got ${bits}`);
  try {
    gptqFormat(bits);
  } catch {
    throw new RangeError(`${op}: bits must be 2, 3, 4 or 8, got ${bits}`);
  }
  for (const [name, v] of [['O', O], ['I', I], ['G', G]] as const) {
    if (!Number.isInteger(v) || v < 1) throw new RangeError(`${op}: ${name} must be a positive integer, got ${v}`);
  }
  checkGptqLayout(O, I, G, bits, op);
}

function checkZeros(op: string, zeros: Uint8Array, O: number, I: number, bits: number, G: number): void {
  if (!(zeros instanceof Uint8Array)) throw new TypeError(`${op}: zeros must be a Uint8Array`);
  const n = (O * I) / G;
  if (zeros.length !== n) {
    throw new RangeError(`${op}: zeros has ${zeros.length} elements, expected ${n} (O=${O}, I/G=${I / G})`);
  }
  const qm = qmax(bits);
  for (let k = 0; k < n; k++) {
    if (zeros[k]! > qm) {
      const at = `${Math.floor(k / (I / G))}, ${k % (I / G)}`;
      throw new RangeError(`${op}: zeros[${at}] = ${zeros[k]} exceeds qmax = ${qm} for ${bits} bits`);
    }
  }
}

/** Throws unless w is a well-formed PackedWeight (layout, array types and lengths). */
export function checkPackedWeight(op: string, w: PackedWeight): void {
  checkLayout(op, w.O, w.I, w.bits, w.G);
  if (!(w.qweight instanceof Int32Array)) throw new TypeError(`${op}: w.qweight must be an Int32Array`);
  const rows = packedWords(gptqFormat(w.bits), w.I, `${op}: w.I`);
  if (w.qweight.length !== rows * w.O) {
    throw new RangeError(
      `${op}: w.qweight has ${w.qweight.length} elements, expected ${rows * w.O} (I*bits/32=${rows}, O=${w.O})`,
    );
  }
  checkZeros(op, w.zeros, w.O, w.I, w.bits, w.G);
}

function checkF32(op: string, t: Tensor, name: string): void {
  if (t.dtype !== 'f32') throw new TypeError(`${op}: argument '${name}' must be f32, got ${t.dtype}`);
}

/** Rows of a (..., cols) tensor: all leading dims merged. */
function rowsOf(op: string, t: Tensor, name: string, cols: number, colName: string): number {
  if (t.rank < 2 || t.dim(-1) !== cols) {
    throw new RangeError(`${op}: argument '${name}' must be (..., ${colName}=${cols}), got shape [${t.shape.join(', ')}]`);
  }
  return t.size / cols;
}

function overlaps(a: Float32Array, b: Float32Array): boolean {
  if (a.buffer !== b.buffer || a.length === 0 || b.length === 0) return false;
  return a.byteOffset < b.byteOffset + b.byteLength && b.byteOffset < a.byteOffset + a.byteLength;
}

type Named = Record<string, Tensor | null | undefined>;

/** Throws when an output overlaps any other argument. */
function noOverlap(op: string, outs: Named, ins: Named): void {
  const o = Object.entries(outs).filter((e): e is [string, Tensor] => !!e[1]);
  const all = [...o, ...Object.entries(ins).filter((e): e is [string, Tensor] => !!e[1])];
  for (const [name, t] of o) {
    for (const [other, u] of all) {
      if (other !== name && overlaps(t.f32, u.f32)) {
        throw new RangeError(`${op}: argument '${name}' overlaps argument '${other}'`);
      }
    }
  }
}

function checkScales(op: string, scales: Tensor, w: PackedWeight, name = 'scales'): void {
  checkF32(op, scales, name);
  const groups = w.I / w.G;
  if (scales.rank !== 2 || scales.dim(0) !== w.O || scales.dim(1) !== groups) {
    const got = scales.shape.join(', ');
    throw new RangeError(`${op}: argument '${name}' must be (O=${w.O}, I/G=${groups}), got shape [${got}]`);
  }
}

/**
 * Checks a forward call (shared by the native wrapper and the twin so both reject the same
 * calls); returns the number of rows N.
 */
export function packedForwardShapes(
  op: string,
  out: Tensor,
  x: Tensor,
  w: PackedWeight,
  scales: Tensor,
  bias?: Tensor | null,
): number {
  checkPackedWeight(op, w);
  checkF32(op, out, 'out');
  checkF32(op, x, 'x');
  checkScales(op, scales, w);
  const N = rowsOf(op, x, 'x', w.I, 'I');
  const No = rowsOf(op, out, 'out', w.O, 'O');
  if (No !== N) throw new RangeError(`${op}: argument 'out' has ${No} rows, argument 'x' has ${N}`);
  if (bias) {
    checkF32(op, bias, 'bias');
    if (bias.rank !== 1 || bias.dim(0) !== w.O) {
      throw new RangeError(`${op}: argument 'bias' must be (O=${w.O}), got shape [${bias.shape.join(', ')}]`);
    }
  }
  noOverlap(op, { out }, { x, scales, bias });
  return N;
}

/** Checks a backward call (shared with the twin); returns the number of rows N. */
export function packedBackwardShapes(
  op: string,
  dx: Tensor | null,
  dscales: Tensor | null,
  dout: Tensor,
  x: Tensor,
  w: PackedWeight,
  scales: Tensor,
  accumulateDx: boolean,
): number {
  checkPackedWeight(op, w);
  if (typeof accumulateDx !== 'boolean') throw new TypeError(`${op}: argument 'accumulateDx' must be a boolean`);
  checkF32(op, dout, 'dout');
  checkF32(op, x, 'x');
  checkScales(op, scales, w);
  const N = rowsOf(op, x, 'x', w.I, 'I');
  const Nd = rowsOf(op, dout, 'dout', w.O, 'O');
  if (Nd !== N) throw new RangeError(`${op}: argument 'dout' has ${Nd} rows, argument 'x' has ${N}`);
  if (dx) {
    checkF32(op, dx, 'dx');
    const Nx = rowsOf(op, dx, 'dx', w.I, 'I');
    if (Nx !== N) throw new RangeError(`${op}: argument 'dx' has ${Nx} rows, argument 'x' has ${N}`);
  }
  if (dscales) checkScales(op, dscales, w, 'dscales');
  noOverlap(op, { dx, dscales }, { dout, x, scales });
  return N;
}

/** Checks a dequantizePacked call (shared with the twin). */
export function dequantizeShapes(op: string, out: Tensor, w: PackedWeight, scales: Tensor): void {
  checkPackedWeight(op, w);
  checkF32(op, out, 'out');
  checkScales(op, scales, w);
  if (out.rank !== 2 || out.dim(0) !== w.O || out.dim(1) !== w.I) {
    throw new RangeError(`${op}: argument 'out' must be (O=${w.O}, I=${w.I}), got shape [${out.shape.join(', ')}]`);
  }
  noOverlap(op, { out }, { scales });
}

type ForwardNative = (
  out: Float32Array,
  x: Float32Array,
  qweight: Int32Array,
  zeros: Uint8Array,
  scales: Float32Array,
  bias: Float32Array | null,
  N: number,
  O: number,
  I: number,
  bits: number,
  G: number,
) => void;
type BackwardNative = (
  dx: Float32Array | null,
  dscales: Float32Array | null,
  dout: Float32Array,
  x: Float32Array,
  qweight: Int32Array,
  zeros: Uint8Array,
  scales: Float32Array,
  N: number,
  O: number,
  I: number,
  bits: number,
  G: number,
  accumulateDx: boolean,
) => void;
type DequantizeNative = (
  out: Float32Array,
  qweight: Int32Array,
  zeros: Uint8Array,
  scales: Float32Array,
  O: number,
  I: number,
  bits: number,
  G: number,
) => void;

/** out (N, O) = x (N, I) @ W_hatᵀ (+ bias (O)); scales (O, I/G) is the trainable f32. Overwrites out. */
export function packedLinearForward(
  out: Tensor, // (N, O)
  x: Tensor, // (N, I)
  w: PackedWeight,
  scales: Tensor, // (O, I/G)
  bias?: Tensor | null, // (O)
): void {
  const op = 'packedLinearForward';
  const N = packedForwardShapes(op, out, x, w, scales, bias);
  const b = bias ? bias.f32 : null;
  nativeFn<ForwardNative>('qlinearForward')(out.f32, x.f32, w.qweight, w.zeros, scales.f32, b, N, w.O, w.I, w.bits, w.G);
}

/**
 * dx (N, I) = dout (N, O) @ W_hat, overwritten (or accumulated with accumulateDx);
 * dscales (O, I/G) += Σ_{i in group} (q − z) · dW_hat[o, i], dW_hat = doutᵀ x (straight-through
 * for the scale clamp). Either of dx / dscales may be null.
 */
export function packedLinearBackward(
  dx: Tensor | null, // (N, I)
  dscales: Tensor | null, // (O, I/G) +=
  dout: Tensor, // (N, O)
  x: Tensor, // (N, I)
  w: PackedWeight,
  scales: Tensor, // (O, I/G)
  accumulateDx = false,
): void {
  const op = 'packedLinearBackward';
  const N = packedBackwardShapes(op, dx, dscales, dout, x, w, scales, accumulateDx);
  if (!dx && !dscales) return;
  nativeFn<BackwardNative>('qlinearBackward')(
    dx ? dx.f32 : null,
    dscales ? dscales.f32 : null,
    dout.f32,
    x.f32,
    w.qweight,
    w.zeros,
    scales.f32,
    N,
    w.O,
    w.I,
    w.bits,
    w.G,
    accumulateDx,
  );
}

/** out (O, I) = W_hat, the dequantized weights (for export and tests; the layer itself never needs it). */
export function dequantizePacked(out: Tensor /* (O, I) */, w: PackedWeight, scales: Tensor /* (O, I/G) */): void {
  const op = 'dequantizePacked';
  dequantizeShapes(op, out, w, scales);
  nativeFn<DequantizeNative>('qlinearDequantize')(out.f32, w.qweight, w.zeros, scales.f32, w.O, w.I, w.bits, w.G);
}
