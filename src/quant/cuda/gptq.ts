// Packed GPTQ weights on CUDA over device arrays: the typed wrapper of
// native/cuda/kernels/gptq.cu. A PackedWeightCuda is the device copy of a PackedWeight
// (src/quant/packed-linear.ts): qweight (I*bits/32, O) i32 in the layout of
// src/quant/gptq-pack.ts packQweight, and the integer zero points (O, I/G) u8; the trainable
// scales (O, I/G) f32 are passed separately, as on the CPU.
//   dequantizeGptqCuda:  out = W_hat[tile] = (q - z) * clamp(scales, 1e-4, 1e4), f32 or bf16
//   gptqScaleGradCuda:   dscales[o, g] += sum_{i in g} (q[o, i] - z[o, g]) * dW[o, i]
// (the E2E-QP step-size gradient: dW = doutᵀ x of the layer, e.g. from matmulCuda; the scale
// clamp is straight-through, as in packedLinearBackward). Both match their twins bit for bit
// (primitives.dequantize on unpackQweight; the dscales loop of src/quant/ref/packed-linear.ts).
//
// Shapes: the kernels need only what the packing itself needs: bits in {2, 3, 4, 8}, I a whole
// number of packing units (a multiple of 32/bits, or of 32 for 3 bits), G dividing I, any O.
// (Checkpoints additionally need I and O multiples of 32: checkGptqLayout.)
// A tile is rows [o0, o0 + rows) and columns [i0, i0 + cols), stored densely (rows, cols); the
// default is the whole matrix. For the gradient, i0 and cols must be multiples of G.
import {
  cudaKernel,
  deviceOverlaps,
  expectDeviceDtype,
  expectDeviceLength,
  freeDevice,
  gridFor,
  launchKernel,
  toDevice,
  type DeviceArray,
  expectKernelInt,
} from '../../engine/cuda.js';
import { gptqFormat, packedWords } from '../formats.js';
import { checkPackedWeight, type PackedWeight } from '../packed-linear.js';

const BLOCK = 256;
const PARAMS = ['ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32'] as const;
const DEQUANT_F32 = cudaKernel('gptq.cu', 'eqat_gptq_dequant_f32', PARAMS);
const DEQUANT_BF16 = cudaKernel('gptq.cu', 'eqat_gptq_dequant_bf16', PARAMS);
const SCALE_GRAD = cudaKernel('gptq.cu', 'eqat_gptq_scale_grad', PARAMS);

/** A packed layer's frozen integers on the device. */
export interface PackedWeightCuda {
  O: number;
  I: number;
  bits: number;
  G: number;
  /** (I*bits/32, O) i32, packQweight's layout. */
  qweight: DeviceArray;
  /** (O, I/G) u8 integer zero points. */
  zeros: DeviceArray;
}

/** A tile of the (O, I) weight: rows [o0, o0 + rows), columns [i0, i0 + cols). */
export interface GptqTile {
  o0: number;
  rows: number;
  i0: number;
  cols: number;
}

/** Uploads a PackedWeight's qweight and zero points (free with freePackedWeightCuda). */
export function uploadPackedWeight(w: PackedWeight): PackedWeightCuda {
  checkPackedWeight('uploadPackedWeight', w);
  const qweight = toDevice(w.qweight);
  try {
    return { O: w.O, I: w.I, bits: w.bits, G: w.G, qweight, zeros: toDevice(w.zeros) };
  } catch (e) {
    freeDevice(qweight);
    throw e;
  }
}

export function freePackedWeightCuda(w: PackedWeightCuda): void {
  freeDevice(w.qweight);
  freeDevice(w.zeros);
}

/** Checks the layout and the device arrays of w; returns the number of groups per row. */
export function checkPackedWeightCuda(op: string, w: PackedWeightCuda): number {
  const { O, I, bits, G } = w;
  let fmt;
  try {
    fmt = gptqFormat(bits);
  } catch {
    throw new RangeError(`${op}: w.bits must be 2, 3, 4 or 8, got ${bits}`);
  }
  for (const [name, v] of [['O', O], ['I', I], ['G', G]] as const) {
    expectKernelInt(v, 1, `${op}: w.${name}`);
  }
  if (I % G !== 0) throw new RangeError(`${op}: group size w.G = ${G} must divide in_features w.I = ${I}`);
  const words = packedWords(fmt, I, `${op}: w.I`);
  expectDeviceDtype(w.qweight, 'i32', `${op}: w.qweight`);
  expectDeviceLength(w.qweight, words * O, `${op}: w.qweight`, `(I*bits/32=${words}, O=${O})`);
  expectDeviceDtype(w.zeros, 'u8', `${op}: w.zeros`);
  expectDeviceLength(w.zeros, (O * I) / G, `${op}: w.zeros`, `(O=${O}, I/G=${I / G})`);
  return I / G;
}

function resolveTile(op: string, w: PackedWeightCuda, tile: GptqTile | undefined): GptqTile {
  const t = tile ?? { o0: 0, rows: w.O, i0: 0, cols: w.I };
  for (const key of ['o0', 'rows', 'i0', 'cols'] as const) {
    if (!Number.isInteger(t[key]) || t[key] < 0) throw new RangeError(`${op}: tile.${key} must be an integer >= 0, got ${t[key]}`);
  }
  if (t.o0 + t.rows > w.O) throw new RangeError(`${op}: tile rows [${t.o0}, ${t.o0 + t.rows}) exceed O = ${w.O}`);
  if (t.i0 + t.cols > w.I) throw new RangeError(`${op}: tile columns [${t.i0}, ${t.i0 + t.cols}) exceed I = ${w.I}`);
  return t;
}

function checkScales(op: string, name: string, a: DeviceArray, w: PackedWeightCuda, groups: number): void {
  expectDeviceDtype(a, 'f32', `${op}: ${name}`);
  expectDeviceLength(a, w.O * groups, `${op}: ${name}`, `(O=${w.O}, I/G=${groups})`);
}

function noOverlap(op: string, outName: string, out: DeviceArray, ins: Record<string, DeviceArray>): void {
  for (const [name, a] of Object.entries(ins)) {
    if (deviceOverlaps(out, a)) throw new RangeError(`${op}: ${outName} overlaps ${name}`);
  }
}

/**
 * out (rows, cols) = W_hat over the tile (default: the whole (O, I) matrix), as f32 or bf16
 * (round to nearest even) by out's dtype. Overwrites out.
 */
export function dequantizeGptqCuda(
  out: DeviceArray, // (rows, cols) f32 or bf16
  w: PackedWeightCuda,
  scales: DeviceArray, // (O, I/G)
  tile?: GptqTile,
): void {
  const op = 'dequantizeGptqCuda';
  const groups = checkPackedWeightCuda(op, w);
  checkScales(op, 'scales', scales, w, groups);
  const t = resolveTile(op, w, tile);
  if (out.dtype !== 'f32' && out.dtype !== 'bf16') throw new TypeError(`${op}: out: expected an f32 or bf16 device array, got ${out.dtype}`);
  expectDeviceLength(out, t.rows * t.cols, `${op}: out`, `(rows=${t.rows}, cols=${t.cols})`);
  noOverlap(op, 'out', out, { 'w.qweight': w.qweight, 'w.zeros': w.zeros, scales });
  const n = t.rows * t.cols;
  if (n === 0) return;
  const kernel = out.dtype === 'f32' ? DEQUANT_F32 : DEQUANT_BF16;
  launchKernel(kernel, gridFor(n, BLOCK), BLOCK, [out, w.qweight, w.zeros, scales, w.O, w.I, w.bits, w.G, t.o0, t.i0, t.rows, t.cols]);
}

/**
 * Accumulates (+=) the step-size gradient of the tile's groups into dscales (O, I/G):
 * dscales[o, g] += Σ_{i in g} (q[o, i] − z[o, g]) · dW[o − o0, i − i0]. dW is the tile
 * (rows, cols) of the weight gradient (default: the whole (O, I)); i0 and cols multiples of G.
 */
export function gptqScaleGradCuda(
  dscales: DeviceArray, // (O, I/G) +=
  dW: DeviceArray, // (rows, cols) f32
  w: PackedWeightCuda,
  tile?: GptqTile,
): void {
  const op = 'gptqScaleGradCuda';
  const groups = checkPackedWeightCuda(op, w);
  checkScales(op, 'dscales', dscales, w, groups);
  const t = resolveTile(op, w, tile);
  if (t.i0 % w.G !== 0 || t.cols % w.G !== 0) {
    throw new RangeError(`${op}: tile columns [${t.i0}, ${t.i0 + t.cols}) must start and end on group boundaries (G = ${w.G})`);
  }
  expectDeviceDtype(dW, 'f32', `${op}: dW`);
  expectDeviceLength(dW, t.rows * t.cols, `${op}: dW`, `(rows=${t.rows}, cols=${t.cols})`);
  noOverlap(op, 'dscales', dscales, { dW, 'w.qweight': w.qweight, 'w.zeros': w.zeros });
  const n = t.rows * (t.cols / w.G);
  if (n === 0) return;
  // blocks of 32 rows by as many whole groups as fit in 256 columns (one group when G is wider)
  const groupsPer = w.G >= 256 ? 1 : Math.floor(256 / w.G);
  const tiles = Math.ceil(t.rows / 32) * Math.ceil(t.cols / w.G / groupsPer);
  launchKernel(SCALE_GRAD, Math.min(tiles, 1 << 20), 256, [dscales, dW, w.qweight, w.zeros, w.O, w.I, w.bits, w.G, t.o0, t.i0, t.rows, t.cols]);
}
