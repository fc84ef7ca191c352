// Export of an eqat quantized checkpoint (GPTQ v2 layout, as `eqat block-ap` writes it) to a
// single GGUF v3 file for llama.cpp (architecture "llama"), without re-quantizing weights
// wherever a GGUF block type can hold them exactly.
//
// The mapping. eqat's weights are Ŵ = (q − z)·s per group of G inputs (f16 s, integer z,
// s clamped to [1e-4, 1e4] as src/quant/primitives.ts does). GGUF's legacy block types hold 32
// consecutive inputs of one row with one f16 scale d, so for G a multiple of 32 every block
// lies inside one group and takes d = s:
//   Q4_0  Ŵ = (x − 8)·d,  x ∈ [0, 15]      x = q − z + 8    exact for ≤ 3 bits (q − z ∈ [−7, 7])
//   Q5_0  Ŵ = (x − 16)·d, x ∈ [0, 31]      x = q − z + 16   exact for ≤ 4 bits (q − z ∈ [−15, 15])
//   Q8_0  Ŵ = x·d,        x ∈ [−128, 127]  x = q − z        exact for ≤ 7 bits; 8 bits when q − z fits
//   Q4_1  Ŵ = x·d + m,    x ∈ [0, 15]      x = q − z + c, m = −c·s (f16): exact when some feasible
//         shift c makes c·s an f16 value (c = 0, powers of two, …), otherwise m is rounded (near-lossless)
// 'auto' picks the exact one per bit width: ≤ 3 bits → Q4_0, 4 → Q5_0, 5..8 → Q8_0. A block that
// an explicitly chosen type cannot hold exactly is re-quantized from Ŵ with llama.cpp's reference
// rounding for that type. Every tensor written is decoded back and compared with eqat's own
// dequantized f32 weights; anything not exact is refused unless allowLossy, and the report gives
// the largest absolute difference (0 for exact mappings).
//
// Other tensors: norms F32 (as trained); embeddings and lm_head F16 when that is exact (the
// source is f16, or f32/bf16 values that f16 holds exactly), otherwise in the source's own type
// (BF16/F32), or Q8_0 on request (lossy). llama.cpp's llama architecture rotates adjacent pairs
// of q/k features where Hugging Face rotates the two halves of each head, so q_proj and k_proj
// rows are permuted per head as convert_hf_to_gguf.py does (row h·D + 2i + j ← h·D + j·D/2 + i).
// The permutation moves whole rows and blocks lie within rows, so it commutes with the mapping.
//
// File layout (GGUF v3, little endian): magic "GGUF", version, tensor count (u64), kv count
// (u64), the metadata key/values, the tensor infos (name, dims innermost first, ggml type, offset
// into the data section), padding to 32 bytes, then each tensor's data at a 32-byte aligned
// offset. Nothing is written until every check has passed (two passes over the weights when the
// export must prove exactness first); the file appears under its name by a final rename.
import { closeSync, existsSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { WeightSource, readQuantLinear } from '../model/weights.js';
import { BLOCK_LINEARS, linearDims, type BlockLinear } from '../model/block.js';
import type { ModelConfig } from '../model/config.js';
import { ropeInvFreq } from '../model/rope.js';
import { clampScale, dequantize, qmax, roundZero } from '../quant/primitives.js';
import { f16ToF32Ref, f32ToF16Ref, fromF32, toF32 } from '../engine/dtype.js';
import type { QuantConfig } from '../quant/checkpoint-config.js';
import { ggufTokenizerMetadata } from './gguf-tokenizer.js';

export interface GgufExportOptions {
  /** Weight type for quantized linears: 'auto' picks the exact mapping per bit width (≤3 bits → Q4_0, 4 → Q5_0, 5..8 → Q8_0); 'q4_1' for 4-bit (near-lossless, smaller); lossy choices need allowLossy. */
  type?: 'auto' | 'q4_0' | 'q4_1' | 'q5_0' | 'q8_0';
  allowLossy?: boolean;
  /**
   * Embeddings / lm_head storage: 'f16' (the default when it is exact), or 'q8_0' (lossy);
   * 'auto' (default) is f16 when f16 holds the source values exactly and the source's own
   * type (bf16/f32) otherwise; 'bf16' and 'f32' force those.
   */
  embeddingType?: 'auto' | 'f16' | 'bf16' | 'f32' | 'q8_0';
}

export interface GgufExportReport {
  path: string;
  tensors: number;
  /** File size. */
  bytes: number;
  /** Largest |decoded GGUF weight − eqat weight| over every tensor written (0 when exact). */
  maxAbsWeightError: number;
  exact: boolean;
  /** Tensor count per GGML type name, e.g. { Q4_0: 28, F32: 9, F16: 2 }. */
  types: Record<string, number>;
  /** Tensors that are not exact, with their largest error and why. */
  lossy: { tensor: string; maxAbsError: number; reason: string }[];
}

// ---------------------------------------------------------------------------------------------
// GGUF constants (ggml.h / gguf-py constants.py)

export const GGUF_MAGIC = 0x46554747; // "GGUF" read as a little-endian u32
export const GGUF_VERSION = 3;
export const GGUF_ALIGNMENT = 32;

/** ggml tensor types used here. */
export const GGML_TYPE = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q5_0: 6, Q8_0: 8, BF16: 30 } as const;
export type GgmlTypeName = keyof typeof GGML_TYPE;

/** Elements per block and bytes per block of each type. */
export const GGML_BLOCK: Record<GgmlTypeName, { elements: number; bytes: number }> = {
  F32: { elements: 1, bytes: 4 },
  F16: { elements: 1, bytes: 2 },
  BF16: { elements: 1, bytes: 2 },
  Q4_0: { elements: 32, bytes: 18 }, // f16 d, 16 bytes of nibbles
  Q4_1: { elements: 32, bytes: 20 }, // f16 d, f16 m, 16 bytes of nibbles
  Q5_0: { elements: 32, bytes: 22 }, // f16 d, u32 high bits, 16 bytes of nibbles
  Q8_0: { elements: 32, bytes: 34 }, // f16 d, 32 int8
};

/** llama_ftype (general.file_type) of a file whose linears are of this type. */
const FILE_TYPE: Record<'Q4_0' | 'Q4_1' | 'Q5_0' | 'Q8_0', number> = { Q4_0: 2, Q4_1: 3, Q8_0: 7, Q5_0: 8 };

/** gguf_type of metadata values. */
const GGUF_VALUE = { u8: 0, i8: 1, u16: 2, i16: 3, u32: 4, i32: 5, f32: 6, bool: 7, str: 8, arr: 9, u64: 10, i64: 11, f64: 12 } as const;

export type GgufValue =
  | { type: 'u32'; value: number }
  | { type: 'i32'; value: number }
  | { type: 'f32'; value: number }
  | { type: 'bool'; value: boolean }
  | { type: 'str'; value: string }
  | { type: 'arr_str'; value: string[] }
  | { type: 'arr_i32'; value: ArrayLike<number> }
  | { type: 'arr_f32'; value: ArrayLike<number> };

export interface GgufKv {
  key: string;
  value: GgufValue;
}

// ---------------------------------------------------------------------------------------------
// Serialization

/** Growable little-endian byte buffer for the header. */
class ByteSink {
  private buf = Buffer.alloc(1 << 16);
  length = 0;

  private reserve(n: number): void {
    if (this.length + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.length + n) size *= 2;
    const next = Buffer.alloc(size);
    this.buf.copy(next, 0, 0, this.length);
    this.buf = next;
  }

  u8(v: number): void {
    this.reserve(1);
    this.buf.writeUInt8(v, this.length);
    this.length += 1;
  }
  u32(v: number): void {
    this.reserve(4);
    this.buf.writeUInt32LE(v, this.length);
    this.length += 4;
  }
  i32(v: number): void {
    this.reserve(4);
    this.buf.writeInt32LE(v, this.length);
    this.length += 4;
  }
  f32(v: number): void {
    this.reserve(4);
    this.buf.writeFloatLE(v, this.length);
    this.length += 4;
  }
  u64(v: number): void {
    this.reserve(8);
    this.buf.writeBigUInt64LE(BigInt(v), this.length);
    this.length += 8;
  }
  str(s: string): void {
    const bytes = Buffer.from(s, 'utf8');
    this.u64(bytes.length);
    this.reserve(bytes.length);
    bytes.copy(this.buf, this.length);
    this.length += bytes.length;
  }
  padTo(alignment: number): void {
    while (this.length % alignment !== 0) this.u8(0);
  }
  bytes(): Buffer {
    return this.buf.subarray(0, this.length);
  }
}

function writeKv(out: ByteSink, { key, value }: GgufKv): void {
  out.str(key);
  switch (value.type) {
    case 'u32':
      out.u32(GGUF_VALUE.u32);
      out.u32(value.value);
      return;
    case 'i32':
      out.u32(GGUF_VALUE.i32);
      out.i32(value.value);
      return;
    case 'f32':
      out.u32(GGUF_VALUE.f32);
      out.f32(value.value);
      return;
    case 'bool':
      out.u32(GGUF_VALUE.bool);
      out.u8(value.value ? 1 : 0);
      return;
    case 'str':
      out.u32(GGUF_VALUE.str);
      out.str(value.value);
      return;
    case 'arr_str':
      out.u32(GGUF_VALUE.arr);
      out.u32(GGUF_VALUE.str);
      out.u64(value.value.length);
      for (const s of value.value) out.str(s);
      return;
    case 'arr_i32':
      out.u32(GGUF_VALUE.arr);
      out.u32(GGUF_VALUE.i32);
      out.u64(value.value.length);
      for (let i = 0; i < value.value.length; i++) out.i32(value.value[i]!);
      return;
    case 'arr_f32':
      out.u32(GGUF_VALUE.arr);
      out.u32(GGUF_VALUE.f32);
      out.u64(value.value.length);
      for (let i = 0; i < value.value.length; i++) out.f32(value.value[i]!);
      return;
  }
}

/** Bytes of a tensor of `type` with dims `ne` (innermost first). */
export function ggmlTensorBytes(type: GgmlTypeName, ne: readonly number[]): number {
  const { elements, bytes } = GGML_BLOCK[type];
  const n = ne.reduce((a, b) => a * b, 1);
  if (ne[0]! % elements !== 0) throw new RangeError(`ggmlTensorBytes: row length ${ne[0]} is not a multiple of ${type}'s block of ${elements}`);
  return (n / elements) * bytes;
}

// ---------------------------------------------------------------------------------------------
// Block encoding of quantized linears

type LinearType = 'Q4_0' | 'Q4_1' | 'Q5_0' | 'Q8_0';

const f = Math.fround;

/** Where row r of the written tensor comes from: the llama.cpp q/k permutation for `nHead` heads of `headDim`. */
export function qkRowPermutation(nHead: number, headDim: number): Int32Array {
  const half = headDim / 2;
  const perm = new Int32Array(nHead * headDim);
  for (let h = 0; h < nHead; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) perm[h * headDim + 2 * i + j] = h * headDim + j * half + i;
    }
  }
  return perm;
}

/** Rounds half away from zero, as C's roundf. */
function roundAway(x: number): number {
  return Math.sign(x) * Math.floor(Math.abs(x) + 0.5);
}

/** llama.cpp's reference quantization of one block of 32 values into `out` (block bytes). */
function referenceBlock(type: LinearType, w: Float32Array, out: Uint8Array): void {
  const view = new DataView(out.buffer, out.byteOffset, out.byteLength);
  out.fill(0);
  if (type === 'Q8_0') {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(w[j]!));
    const d = f(amax / 127);
    const id = d ? f(1 / d) : 0;
    view.setUint16(0, f32ToF16Ref(d), true);
    for (let j = 0; j < 32; j++) view.setInt8(2 + j, roundAway(f(w[j]! * id)));
    return;
  }
  if (type === 'Q4_1') {
    let min = Infinity;
    let max = -Infinity;
    for (let j = 0; j < 32; j++) {
      min = Math.min(min, w[j]!);
      max = Math.max(max, w[j]!);
    }
    const d = f((max - min) / 15);
    const id = d ? f(1 / d) : 0;
    view.setUint16(0, f32ToF16Ref(d), true);
    view.setUint16(2, f32ToF16Ref(min), true);
    for (let j = 0; j < 16; j++) {
      const x0 = Math.min(15, Math.trunc(f(f(f(w[j]! - min) * id) + 0.5)));
      const x1 = Math.min(15, Math.trunc(f(f(f(w[j + 16]! - min) * id) + 0.5)));
      out[4 + j] = x0 | (x1 << 4);
    }
    return;
  }
  // Q4_0 / Q5_0: d = (value of largest magnitude) / −2^(b−1)
  const levels = type === 'Q4_0' ? 8 : 16;
  let amax = 0;
  let max = 0;
  for (let j = 0; j < 32; j++) {
    if (amax < Math.abs(w[j]!)) {
      amax = Math.abs(w[j]!);
      max = w[j]!;
    }
  }
  const d = f(max / -levels);
  const id = d ? f(1 / d) : 0;
  view.setUint16(0, f32ToF16Ref(d), true);
  const codes = new Int32Array(32);
  for (let j = 0; j < 32; j++) codes[j] = Math.min(2 * levels - 1, Math.trunc(f(f(w[j]! * id) + (levels + 0.5))));
  packNibbles(type, codes, out);
}

/** Writes the codes x (already offset into [0, 15] or [0, 31]) of a Q4_0/Q4_1/Q5_0 block after its header. */
function packNibbles(type: 'Q4_0' | 'Q4_1' | 'Q5_0', x: Int32Array, out: Uint8Array): void {
  const qs = type === 'Q4_0' ? 2 : type === 'Q4_1' ? 4 : 6;
  for (let j = 0; j < 16; j++) out[qs + j] = (x[j]! & 0xf) | ((x[j + 16]! & 0xf) << 4);
  if (type === 'Q5_0') {
    let qh = 0;
    for (let j = 0; j < 32; j++) qh |= ((x[j]! >> 4) & 1) << j;
    new DataView(out.buffer, out.byteOffset, out.byteLength).setUint32(2, qh >>> 0, true);
  }
}

/** Decodes `rows` rows of `cols` values of a block-quantized tensor as llama.cpp's dequantize_row_* does. */
export function decodeBlocks(type: LinearType, data: Uint8Array, rows: number, cols: number, out = new Float32Array(rows * cols)): Float32Array {
  const { bytes } = GGML_BLOCK[type];
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  const nBlocks = (rows * cols) / 32;
  for (let b = 0; b < nBlocks; b++) {
    const at = b * bytes;
    const d = f16ToF32Ref(view.getUint16(at, true));
    const base = b * 32;
    if (type === 'Q8_0') {
      for (let j = 0; j < 32; j++) out[base + j] = f(view.getInt8(at + 2 + j) * d);
    } else if (type === 'Q4_1') {
      const m = f16ToF32Ref(view.getUint16(at + 2, true));
      for (let j = 0; j < 16; j++) {
        const byte = data[at + 4 + j]!;
        out[base + j] = f(f((byte & 0xf) * d) + m);
        out[base + j + 16] = f(f((byte >> 4) * d) + m);
      }
    } else if (type === 'Q4_0') {
      for (let j = 0; j < 16; j++) {
        const byte = data[at + 2 + j]!;
        out[base + j] = f(((byte & 0xf) - 8) * d);
        out[base + j + 16] = f(((byte >> 4) - 8) * d);
      }
    } else {
      const qh = view.getUint32(at + 2, true);
      for (let j = 0; j < 16; j++) {
        const byte = data[at + 6 + j]!;
        const hi0 = ((qh >>> j) & 1) << 4;
        const hi1 = ((qh >>> (j + 16)) & 1) << 4;
        out[base + j] = f((((byte & 0xf) | hi0) - 16) * d);
        out[base + j + 16] = f((((byte >> 4) | hi1) - 16) * d);
      }
    }
  }
  return out;
}

/** Why blocks of a linear were not mapped exactly. */
interface EncodeNotes {
  requantized: number;
  roundedMin: number;
}

/**
 * Encodes one quantized linear (codes q (O, I), scale/zero (O, I/G)) as `type`, rows in the
 * order `perm` gives (perm[r] = source row of written row r). `ref` receives eqat's dequantized
 * weights in the written row order.
 */
function encodeLinear(
  type: LinearType,
  lin: { q: Uint8Array; scale: Float32Array; zero: Float32Array },
  O: number,
  I: number,
  quant: QuantConfig,
  perm: Int32Array | null,
  ref: Float32Array, // (O, I) output
): { data: Uint8Array; notes: EncodeNotes } {
  const G = quant.groupSize;
  const groups = I / G;
  const qm = qmax(quant.bits);
  const deq = dequantize(lin.q, lin.scale, lin.zero, O, I, quant.bits, G);
  const { bytes } = GGML_BLOCK[type];
  const blocksPerRow = I / 32;
  const data = new Uint8Array(O * blocksPerRow * bytes);
  const view = new DataView(data.buffer);
  const k = new Int32Array(32);
  const x = new Int32Array(32);
  const w = new Float32Array(32);
  const notes: EncodeNotes = { requantized: 0, roundedMin: 0 };
  for (let r = 0; r < O; r++) {
    const src = perm ? perm[r]! : r;
    ref.set(deq.subarray(src * I, (src + 1) * I), r * I);
    for (let b = 0; b < blocksPerRow; b++) {
      const g = Math.floor((b * 32) / G);
      const s = clampScale(lin.scale[src * groups + g]!);
      const z = roundZero(lin.zero[src * groups + g]!, qm);
      const dBits = f32ToF16Ref(s);
      const sExact = f16ToF32Ref(dBits) === s;
      let kmin = Infinity;
      let kmax = -Infinity;
      for (let j = 0; j < 32; j++) {
        const kk = lin.q[src * I + b * 32 + j]! - z;
        k[j] = kk;
        if (kk < kmin) kmin = kk;
        if (kk > kmax) kmax = kk;
      }
      const at = (r * blocksPerRow + b) * bytes;
      const block = data.subarray(at, at + bytes);
      let lo: number;
      let hi: number;
      let offset: number;
      switch (type) {
        case 'Q4_0':
          [lo, hi, offset] = [-8, 7, 8];
          break;
        case 'Q5_0':
          [lo, hi, offset] = [-16, 15, 16];
          break;
        case 'Q8_0':
          [lo, hi, offset] = [-128, 127, 0];
          break;
        case 'Q4_1': {
          // x = k + c ∈ [0, 15] for c ∈ [−kmin, 15 − kmax]; m = −c·s, best when exact in f16
          let best: number | null = null;
          let bestErr = Infinity;
          for (let c = -kmin; c <= 15 - kmax; c++) {
            const m = f(-c * s);
            const err = Math.abs(f16ToF32Ref(f32ToF16Ref(m)) - m);
            if (best === null || err < bestErr || (err === bestErr && Math.abs(c - z) < Math.abs(best - z))) {
              best = c;
              bestErr = err;
            }
          }
          // no feasible shift (the block spans more than 16 levels): an empty range forces re-quantization
          [lo, hi, offset] = best === null ? [0, -1, 0] : [-best, 15 - best, best];
          break;
        }
      }
      if (!sExact || kmin < lo || kmax > hi) {
        for (let j = 0; j < 32; j++) w[j] = deq[src * I + b * 32 + j]!;
        referenceBlock(type, w, block);
        notes.requantized++;
        continue;
      }
      view.setUint16(at, dBits, true);
      if (type === 'Q8_0') {
        for (let j = 0; j < 32; j++) view.setInt8(at + 2 + j, k[j]!);
        continue;
      }
      for (let j = 0; j < 32; j++) x[j] = k[j]! + offset;
      if (type === 'Q4_1') {
        const m = f(-offset * s);
        const mBits = f32ToF16Ref(m);
        if (f16ToF32Ref(mBits) !== m) notes.roundedMin++;
        view.setUint16(at + 2, mBits, true);
      }
      packNibbles(type, x, block);
    }
  }
  return { data, notes };
}

// ---------------------------------------------------------------------------------------------
// Embeddings / lm_head

type EmbeddingType = 'F16' | 'BF16' | 'F32' | 'Q8_0';

function bytesOf(a: Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** Source values in f32 and the raw storage, for an F32/F16/BF16 safetensors tensor. */
function readFloatTensor(src: WeightSource, name: string): { f32: Float32Array; dtype: 'f32' | 'f16' | 'bf16'; raw: Float32Array | Uint16Array } {
  const t = src.safetensors.readTensor(name);
  if (t.dtype === 'f32') return { f32: t.f32, dtype: 'f32', raw: t.f32 };
  if (t.dtype === 'f16' || t.dtype === 'bf16') {
    const raw = t.data as Uint16Array;
    return { f32: toF32(t.dtype, raw), dtype: t.dtype, raw };
  }
  throw new Error(`exportGguf: ${name} has dtype ${t.dtype}, expected a floating-point tensor`);
}

/** Max |a − b| (NaN-safe: a NaN difference counts as infinite). */
function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i]! - b[i]!);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

function encodeFloatTensor(
  want: 'auto' | EmbeddingType,
  t: { f32: Float32Array; dtype: 'f32' | 'f16' | 'bf16'; raw: Float32Array | Uint16Array },
  rows: number,
  cols: number,
): { type: EmbeddingType; data: Uint8Array; maxErr: number } {
  const asF16 = (): { type: EmbeddingType; data: Uint8Array; maxErr: number } => {
    const bits = t.dtype === 'f16' ? (t.raw as Uint16Array) : fromF32('f16', t.f32);
    return { type: 'F16', data: bytesOf(bits), maxErr: t.dtype === 'f16' ? 0 : maxAbsDiff(toF32('f16', bits), t.f32) };
  };
  switch (want) {
    case 'F16':
      return asF16();
    case 'BF16': {
      const bits = t.dtype === 'bf16' ? (t.raw as Uint16Array) : fromF32('bf16', t.f32);
      return { type: 'BF16', data: bytesOf(bits), maxErr: t.dtype === 'bf16' ? 0 : maxAbsDiff(toF32('bf16', bits), t.f32) };
    }
    case 'F32':
      return { type: 'F32', data: bytesOf(t.f32), maxErr: 0 };
    case 'Q8_0': {
      if (cols % 32 !== 0) throw new RangeError(`exportGguf: embeddingType 'q8_0' needs hidden_size (${cols}) to be a multiple of 32`);
      const data = new Uint8Array((rows * cols / 32) * 34);
      for (let b = 0; b < (rows * cols) / 32; b++) referenceBlock('Q8_0', t.f32.subarray(b * 32, b * 32 + 32), data.subarray(b * 34, b * 34 + 34));
      return { type: 'Q8_0', data, maxErr: maxAbsDiff(decodeBlocks('Q8_0', data, rows, cols), t.f32) };
    }
    case 'auto': {
      const h = asF16();
      if (h.maxErr === 0) return h;
      return encodeFloatTensor(t.dtype === 'bf16' ? 'BF16' : 'F32', t, rows, cols);
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Export

interface PlannedTensor {
  name: string;
  ne: number[]; // dims, innermost first
  type: GgmlTypeName;
  /** Encodes the tensor; maxErr is |decoded − eqat's f32 weight| at worst. */
  produce(): { data: Uint8Array; maxErr: number; reason: string };
}

const LINEAR_GGUF_NAME: Record<BlockLinear, string> = {
  q: 'attn_q',
  k: 'attn_k',
  v: 'attn_v',
  o: 'attn_output',
  gate: 'ffn_gate',
  up: 'ffn_up',
  down: 'ffn_down',
};

function linearTypeFor(type: NonNullable<GgufExportOptions['type']>, bits: number): LinearType {
  switch (type) {
    case 'auto':
      return bits <= 3 ? 'Q4_0' : bits === 4 ? 'Q5_0' : 'Q8_0';
    case 'q4_0':
      return 'Q4_0';
    case 'q4_1':
      return 'Q4_1';
    case 'q5_0':
      return 'Q5_0';
    case 'q8_0':
      return 'Q8_0';
  }
}

/** Checks everything about the model that can be checked without reading weights. */
function checkModel(modelDir: string, cfg: ModelConfig, quant: QuantConfig | null): asserts quant is QuantConfig {
  const what = `exportGguf: ${modelDir}`;
  if (cfg.modelType !== 'llama' && cfg.modelType !== 'mistral') {
    throw new Error(
      `${what}: model_type '${cfg.modelType}' is not supported by the GGUF export (it writes llama.cpp's "llama" architecture, which covers llama and mistral checkpoints)`,
    );
  }
  if (quant === null) {
    throw new Error(`${what}: a full-precision checkpoint (no quantization_config in config.json); the GGUF export takes an eqat quantized checkpoint (eqat block-ap --out DIR)`);
  }
  if (quant.groupSize % 32 !== 0) {
    throw new Error(
      `${what}: group size ${quant.groupSize} is not a multiple of 32; GGUF block types hold 32 weights with one scale, so each block must lie inside one quantization group`,
    );
  }
  if (cfg.qkvBias || cfg.oBias || cfg.mlpBias) throw new Error(`${what}: linear biases (attention_bias / mlp_bias) are not supported by the GGUF export`);
  if (cfg.qkNorm) throw new Error(`${what}: q/k norms are not part of llama.cpp's llama architecture`);
  for (const [name, dim] of [
    ['hidden_size', cfg.hiddenSize],
    ['intermediate_size', cfg.intermediateSize],
    ['num_attention_heads*head_dim', cfg.numHeads * cfg.headDim],
  ] as const) {
    if (dim % 32 !== 0) throw new Error(`${what}: ${name} = ${dim} is not a multiple of 32 (GGUF block size)`);
  }
}

/** The llama.* and general.* metadata. */
function modelMetadata(modelDir: string, cfg: ModelConfig, linearType: LinearType): GgufKv[] {
  const arch = 'llama';
  const u32 = (key: string, value: number): GgufKv => ({ key, value: { type: 'u32', value } });
  const f32 = (key: string, value: number): GgufKv => ({ key, value: { type: 'f32', value } });
  // llama.cpp's llama architecture has no sliding window: a mistral window shorter than the
  // context is honoured by capping the context length at the window.
  const context = cfg.slidingWindow !== null ? Math.min(cfg.maxPositionEmbeddings, cfg.slidingWindow) : cfg.maxPositionEmbeddings;
  const kv: GgufKv[] = [
    { key: 'general.architecture', value: { type: 'str', value: arch } },
    { key: 'general.name', value: { type: 'str', value: basename(resolve(modelDir)) } },
    u32('general.file_type', FILE_TYPE[linearType]),
    u32('general.quantization_version', 2),
    u32(`${arch}.vocab_size`, cfg.vocabSize),
    u32(`${arch}.context_length`, context),
    u32(`${arch}.embedding_length`, cfg.hiddenSize),
    u32(`${arch}.block_count`, cfg.numLayers),
    u32(`${arch}.feed_forward_length`, cfg.intermediateSize),
    u32(`${arch}.attention.head_count`, cfg.numHeads),
    u32(`${arch}.attention.head_count_kv`, cfg.numKvHeads),
    u32(`${arch}.attention.key_length`, cfg.headDim),
    u32(`${arch}.attention.value_length`, cfg.headDim),
    u32(`${arch}.rope.dimension_count`, cfg.headDim),
    f32(`${arch}.rope.freq_base`, cfg.ropeTheta),
    f32(`${arch}.attention.layer_norm_rms_epsilon`, cfg.rmsNormEps),
  ];
  if (cfg.ropeScaling.type === 'linear') {
    kv.push({ key: `${arch}.rope.scaling.type`, value: { type: 'str', value: 'linear' } });
    kv.push(f32(`${arch}.rope.scaling.factor`, cfg.ropeScaling.factor));
  }
  return kv;
}

/** Writes `tensors` with `kv` as a GGUF file at path (data produced tensor by tensor). */
function writeGguf(path: string, kv: GgufKv[], tensors: PlannedTensor[], onTensor: (t: PlannedTensor, r: { maxErr: number; reason: string }) => void): void {
  const head = new ByteSink();
  head.u32(GGUF_MAGIC);
  head.u32(GGUF_VERSION);
  head.u64(tensors.length);
  head.u64(kv.length);
  for (const e of kv) writeKv(head, e);
  let offset = 0;
  const offsets: number[] = [];
  for (const t of tensors) {
    head.str(t.name);
    head.u32(t.ne.length);
    for (const d of t.ne) head.u64(d);
    head.u32(GGML_TYPE[t.type]);
    head.u64(offset);
    offsets.push(offset);
    offset += ggmlTensorBytes(t.type, t.ne);
    offset = Math.ceil(offset / GGUF_ALIGNMENT) * GGUF_ALIGNMENT;
  }
  head.padTo(GGUF_ALIGNMENT);
  const fd = openSync(path, 'w');
  try {
    const header = head.bytes();
    writeSync(fd, header);
    const dataStart = header.length;
    let pos = dataStart;
    const zeros = new Uint8Array(GGUF_ALIGNMENT);
    tensors.forEach((t, i) => {
      const target = dataStart + offsets[i]!;
      if (target > pos) {
        writeSync(fd, zeros, 0, target - pos);
        pos = target;
      }
      const { data, maxErr, reason } = t.produce();
      const expect = ggmlTensorBytes(t.type, t.ne);
      if (data.byteLength !== expect) throw new Error(`exportGguf: internal error: ${t.name} encoded to ${data.byteLength} bytes, expected ${expect}`);
      writeSync(fd, data, 0, data.byteLength);
      pos += data.byteLength;
      onTensor(t, { maxErr, reason });
    });
  } finally {
    closeSync(fd);
  }
}

/**
 * Writes `modelDir` (an eqat quantized checkpoint) as a GGUF file at `outPath` for llama.cpp.
 * Throws before writing anything for an unsupported model, a group size that is not a multiple
 * of 32, an unsupported tokenizer, or a mapping that is not exact when allowLossy is not set.
 */
export async function exportGguf(modelDir: string, outPath: string, opts: GgufExportOptions = {}): Promise<GgufExportReport> {
  const typeOpt = opts.type ?? 'auto';
  if (!['auto', 'q4_0', 'q4_1', 'q5_0', 'q8_0'].includes(typeOpt)) {
    throw new RangeError(`exportGguf: type must be 'auto', 'q4_0', 'q4_1', 'q5_0' or 'q8_0', got ${JSON.stringify(typeOpt)}`);
  }
  const embOpt = opts.embeddingType ?? 'auto';
  if (!['auto', 'f16', 'bf16', 'f32', 'q8_0'].includes(embOpt)) {
    throw new RangeError(`exportGguf: embeddingType must be 'auto', 'f16', 'bf16', 'f32' or 'q8_0', got ${JSON.stringify(embOpt)}`);
  }
  const embWant = embOpt === 'auto' ? 'auto' : (embOpt.toUpperCase() as EmbeddingType);
  const allowLossy = opts.allowLossy === true;
  const out = resolve(outPath);
  if (!existsSync(dirname(out))) throw new Error(`exportGguf: output directory ${dirname(out)} does not exist`);
  if (existsSync(out) && statSync(out).isDirectory()) throw new Error(`exportGguf: output path ${out} is a directory`);

  const src = WeightSource.open(modelDir);
  try {
    const cfg = src.cfg;
    const quant = src.quant;
    checkModel(modelDir, cfg, quant);
    const linearType = linearTypeFor(typeOpt, quant.bits);
    const tokenizer = ggufTokenizerMetadata(modelDir, cfg.vocabSize);
    const kv = [...modelMetadata(modelDir, cfg, linearType), ...tokenizer.kv];
    const st = src.safetensors;
    const C = cfg.hiddenSize;
    const V = cfg.vocabSize;

    const tensors: PlannedTensor[] = [];
    const floatTensor = (name: string, hfName: string, rows: number, cols: number): void => {
      const plannedType = (): EmbeddingType => {
        if (embWant !== 'auto') return embWant;
        // decided from the data: the header needs the type before any data is written
        return encodeFloatTensor('auto', readFloatTensor(src, hfName), rows, cols).type;
      };
      const type = plannedType();
      tensors.push({
        name,
        ne: [cols, rows],
        type,
        produce: () => {
          const t = readFloatTensor(src, hfName);
          if (t.f32.length !== rows * cols) throw new Error(`exportGguf: ${hfName} has ${t.f32.length} values, the config implies ${rows}x${cols}`);
          const r = encodeFloatTensor(type, t, rows, cols);
          return { data: r.data, maxErr: r.maxErr, reason: r.maxErr > 0 ? `${t.dtype} values stored as ${type}` : '' };
        },
      });
    };
    const normTensor = (name: string, hfName: string, n: number): void => {
      tensors.push({
        name,
        ne: [n],
        type: 'F32',
        produce: () => {
          const v = st.readF32(hfName);
          if (v.length !== n) throw new Error(`exportGguf: ${hfName} has ${v.length} values, expected ${n}`);
          return { data: bytesOf(v), maxErr: 0, reason: '' };
        },
      });
    };

    floatTensor('token_embd.weight', 'model.embed_tokens.weight', V, C);
    normTensor('output_norm.weight', 'model.norm.weight', C);
    if (!cfg.tieWordEmbeddings) {
      if (!st.has('lm_head.weight')) throw new Error(`exportGguf: ${modelDir}: missing tensor lm_head.weight (tie_word_embeddings is false)`);
      floatTensor('output.weight', 'lm_head.weight', V, C);
    }
    if (cfg.ropeScaling.type === 'llama3') {
      const base = ropeInvFreq(cfg.headDim, cfg.ropeTheta, { type: 'default' });
      const scaled = ropeInvFreq(cfg.headDim, cfg.ropeTheta, cfg.ropeScaling);
      const factors = new Float32Array(base.length);
      for (let i = 0; i < base.length; i++) factors[i] = base[i]! / scaled[i]!;
      tensors.push({ name: 'rope_freqs.weight', ne: [factors.length], type: 'F32', produce: () => ({ data: bytesOf(factors), maxErr: 0, reason: '' }) });
    }
    const qPerm = qkRowPermutation(cfg.numHeads, cfg.headDim);
    const kPerm = qkRowPermutation(cfg.numKvHeads, cfg.headDim);
    for (let i = 0; i < cfg.numLayers; i++) {
      const prefix = `model.layers.${i}.`;
      normTensor(`blk.${i}.attn_norm.weight`, prefix + 'input_layernorm.weight', C);
      for (const [key, module] of BLOCK_LINEARS) {
        const [O, I] = linearDims(cfg, key);
        const perm = key === 'q' ? qPerm : key === 'k' ? kPerm : null;
        tensors.push({
          name: `blk.${i}.${LINEAR_GGUF_NAME[key]}.weight`,
          ne: [I, O],
          type: linearType,
          produce: () => {
            const lin = readQuantLinear(st, quant, prefix + module, O, I);
            const ref = new Float32Array(O * I);
            const { data, notes } = encodeLinear(linearType, lin, O, I, quant, perm, ref);
            const maxErr = maxAbsDiff(decodeBlocks(linearType, data, O, I), ref);
            const reasons: string[] = [];
            if (notes.requantized) reasons.push(`${notes.requantized} of ${(O * I) / 32} blocks re-quantized (${quant.bits}-bit codes do not fit ${linearType} with d = s)`);
            if (notes.roundedMin) reasons.push(`${notes.roundedMin} blocks with the Q4_1 min rounded to f16`);
            return { data, maxErr, reason: reasons.join('; ') };
          },
        });
      }
      normTensor(`blk.${i}.ffn_norm.weight`, prefix + 'post_attention_layernorm.weight', C);
    }

    const lossy: GgufExportReport['lossy'] = [];
    let maxErr = 0;
    const record = (t: PlannedTensor, r: { maxErr: number; reason: string }): void => {
      if (r.maxErr > 0) lossy.push({ tensor: t.name, maxAbsError: r.maxErr, reason: r.reason || 'not exact' });
      maxErr = Math.max(maxErr, r.maxErr);
    };
    if (!allowLossy) {
      // prove exactness before anything is written
      for (const t of tensors) record(t, t.produce());
      if (lossy.length > 0) {
        const worst = lossy.reduce((a, b) => (b.maxAbsError > a.maxAbsError ? b : a));
        const linearsLossy = lossy.some((l) => l.tensor.startsWith('blk.'));
        const floatsLossy = lossy.some((l) => !l.tensor.startsWith('blk.'));
        const hints: string[] = [];
        if (linearsLossy && typeOpt !== 'auto') hints.push("type 'auto'");
        if (floatsLossy && embOpt !== 'auto') hints.push("embeddingType 'auto'");
        const fix =
          hints.length > 0
            ? `use ${hints.join(' and ')} for an exact export, or allowLossy to accept it`
            : `no GGUF block type holds these ${quant.bits}-bit codes exactly (Q8_0 holds q − z only within [−128, 127]); allowLossy re-quantizes the blocks that do not fit`;
        throw new Error(
          `exportGguf: the requested mapping is not exact for ${lossy.length} tensor(s) (max abs weight error ${worst.maxAbsError.toExponential(3)} in ${worst.tensor}: ${worst.reason}); ${fix}. Nothing was written.`,
        );
      }
      lossy.length = 0;
      maxErr = 0;
    }

    const partial = out + '.partial';
    try {
      writeGguf(partial, kv, tensors, record);
      renameSync(partial, out);
    } catch (e) {
      rmSync(partial, { force: true });
      throw e;
    }
    const types: Record<string, number> = {};
    for (const t of tensors) types[t.type] = (types[t.type] ?? 0) + 1;
    return { path: out, tensors: tensors.length, bytes: statSync(out).size, maxAbsWeightError: maxErr, exact: maxErr === 0, types, lossy };
  } finally {
    src.close();
  }
}

