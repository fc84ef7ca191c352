// The ggml tensor types the GGUF export writes, described once in a traits table after ggml's
// type_traits: per type its ggml id, the llama_ftype of a file whose linears use it, its block
// (elements and bytes), how blocks decode to f32 (llama.cpp's dequantize_row_*), the reference
// encoder from f32 (quantize_row_*_ref, or the plain conversion for float types), and for the
// integer block types how eqat's integer codes go into a block exactly. Adding a type means
// adding one entry to GGUF_TYPE_TRAITS; src/export/gguf.ts only reads the table.
//
// Block layouts (little endian, d and m f16, 32 values per block):
//   Q4_0  d, 16 bytes of nibbles                  w = (x − 8)·d,  x ∈ [0, 15]
//   Q4_1  d, m, 16 bytes of nibbles               w = x·d + m,    x ∈ [0, 15]
//   Q5_0  d, u32 of fifth bits, 16 bytes nibbles  w = (x − 16)·d, x ∈ [0, 31]
//   Q8_0  d, 32 int8                              w = x·d,        x ∈ [−128, 127]
// Byte j of the nibbles holds value j in its low half and value j + 16 in its high half; bit j
// of Q5_0's u32 is the fifth bit of value j.
//
// Exact codes. eqat's weights are (q − z)·s per group; with k = q − z, a block inside one group
// takes d = s (when s is an f16 value) and x = k + c for a shift c that puts every x of the block
// in the type's code range. Q4_0, Q5_0 and Q8_0 have a fixed shift (8, 16, 0), so they hold
// k ∈ [−8, 7], [−16, 15] and [−128, 127] whatever the scale. Q4_1 picks c per block, stores
// m = −c·d, and is exact when some feasible c makes c·d an f16 value (c = 0, powers of two, …).
import { f16ToF32Ref, f32ToF16Ref, fromF32, toF32 } from '../engine/dtype.js';

/** Safetensors dtypes of the float tensors the export reads. */
export type FloatDtype = 'f32' | 'f16' | 'bf16';

/** How an integer block type holds codes k = q − z with d = s exactly. */
export interface ExactCodes {
  /** Range of the stored integer x. */
  readonly min: number;
  readonly max: number;
  /** The fixed shift (x = k + offset), or null when each block picks its shift c and stores m = −c·d. */
  readonly offset: number | null;
  /**
   * The shift c (x = k + c) for a block whose codes span [kmin, kmax] with scale d, or null when
   * no shift fits them into [min, max]. Among equally good shifts, the one nearest z.
   */
  shift(kmin: number, kmax: number, d: number, z: number): number | null;
  /**
   * Writes one block (32 codes k, scale d an f16 value, shift c from `shift`) into out (its
   * bytes); false when the block's min m = −c·d had to be rounded to f16.
   */
  encode(k: Int32Array, d: number, c: number, out: Uint8Array): boolean;
}

export interface GgmlTypeTraits {
  /** ggml_type in the tensor infos. */
  readonly id: number;
  /** llama_ftype (general.file_type) of a file whose linears are of this type. */
  readonly fileType: number;
  readonly blockElements: number;
  readonly blockBytes: number;
  /** Safetensors dtype with the same bytes (float types), else null. */
  readonly dtype: FloatDtype | null;
  /** Source dtypes every value of which this type stores exactly. */
  readonly holds: readonly FloatDtype[];
  /** Decodes out.length values (whole blocks) from data, as llama.cpp's dequantize_row_* does. */
  decode(data: Uint8Array, out: Float32Array): void;
  /** Encodes w (whole blocks) into out with llama.cpp's reference rounding for the type. */
  encodeReference(w: Float32Array, out: Uint8Array): void;
  /** How integer codes go into a block exactly; null for float types. */
  readonly exact: ExactCodes | null;
}

type FloatTraits = GgmlTypeTraits & { readonly exact: null };
type IntegerTraits = GgmlTypeTraits & { readonly exact: ExactCodes };

const f = Math.fround;

function viewOf(a: Uint8Array): DataView {
  return new DataView(a.buffer, a.byteOffset, a.byteLength);
}

/** The bytes of a typed array as stored (little endian). */
export function bytesOf(a: Float32Array | Uint16Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

/** n u16 values stored at data (copied when data is not 2-byte aligned). */
function u16Of(data: Uint8Array, n: number): Uint16Array {
  return data.byteOffset % 2 === 0 ? new Uint16Array(data.buffer, data.byteOffset, n) : new Uint16Array(data.slice(0, 2 * n).buffer);
}

/** Rounds half away from zero, as C's roundf. */
function roundAway(x: number): number {
  return Math.sign(x) * Math.floor(Math.abs(x) + 0.5);
}

// ---------------------------------------------------------------------------------------------
// Float types

function f32Traits(): FloatTraits {
  return {
    id: 0,
    fileType: 0, // LLAMA_FTYPE_ALL_F32
    blockElements: 1,
    blockBytes: 4,
    dtype: 'f32',
    holds: ['f32', 'f16', 'bf16'],
    decode: (data, out) => bytesOf(out).set(data.subarray(0, out.byteLength)),
    encodeReference: (w, out) => out.set(bytesOf(w)),
    exact: null,
  };
}

function halfTraits(id: number, fileType: number, dtype: 'f16' | 'bf16'): FloatTraits {
  return {
    id,
    fileType,
    blockElements: 1,
    blockBytes: 2,
    dtype,
    holds: [dtype],
    decode: (data, out) => void toF32(dtype, u16Of(data, out.length), out),
    encodeReference: (w, out) => out.set(bytesOf(fromF32(dtype, w))),
    exact: null,
  };
}

// ---------------------------------------------------------------------------------------------
// Integer block types

const BLOCK = 32;

/** Writes 32 codes x (each in [0, 15] after masking) as nibbles at out[at .. at + 16). */
function packNibbles(x: Int32Array, out: Uint8Array, at: number): void {
  for (let j = 0; j < 16; j++) out[at + j] = (x[j]! & 0xf) | ((x[j + 16]! & 0xf) << 4);
}

/** Code j of a block whose nibbles start at data[at]. */
function nibble(data: Uint8Array, at: number, j: number): number {
  const byte = data[at + (j & 15)]!;
  return j < 16 ? byte & 0xf : byte >> 4;
}

/** Applies `block(at, base)` to every block: byte offset `at` in data, first value `base` of out. */
function eachBlock(n: number, bytes: number, block: (at: number, base: number) => void): void {
  for (let b = 0; b < n / BLOCK; b++) block(b * bytes, b * BLOCK);
}

/** The exact-code traits of a type with a fixed shift: k ∈ [min − offset, max − offset] fits. */
function fixedOffsetCodes(min: number, max: number, offset: number, write: (x: Int32Array, out: Uint8Array) => void): ExactCodes {
  const x = new Int32Array(BLOCK);
  return {
    min,
    max,
    offset,
    shift: (kmin, kmax) => (kmin + offset >= min && kmax + offset <= max ? offset : null),
    encode: (k, d, c, out) => {
      for (let j = 0; j < BLOCK; j++) x[j] = k[j]! + c;
      viewOf(out).setUint16(0, f32ToF16Ref(d), true);
      write(x, out);
      return true;
    },
  };
}

/**
 * llama.cpp's reference rounding of the symmetric nibble types (Q4_0: 8 levels each side, Q5_0:
 * 16): d = (the value of largest magnitude) / −levels, x = min(2·levels − 1, trunc(w/d + levels + ½)).
 */
function referenceSymmetric(levels: number, bytes: number, write: (x: Int32Array, out: Uint8Array) => void): (w: Float32Array, out: Uint8Array) => void {
  const x = new Int32Array(BLOCK);
  return (w, out) => {
    eachBlock(w.length, bytes, (at, base) => {
      let amax = 0;
      let max = 0;
      for (let j = 0; j < BLOCK; j++) {
        if (amax < Math.abs(w[base + j]!)) {
          amax = Math.abs(w[base + j]!);
          max = w[base + j]!;
        }
      }
      const d = f(max / -levels);
      const id = d ? f(1 / d) : 0;
      const block = out.subarray(at, at + bytes);
      viewOf(block).setUint16(0, f32ToF16Ref(d), true);
      for (let j = 0; j < BLOCK; j++) x[j] = Math.min(2 * levels - 1, Math.trunc(f(f(w[base + j]! * id) + (levels + 0.5))));
      write(x, block);
    });
  };
}

function q4_0Traits(): IntegerTraits {
  const bytes = 18;
  const write = (x: Int32Array, out: Uint8Array): void => packNibbles(x, out, 2);
  return {
    id: 2,
    fileType: 2, // LLAMA_FTYPE_MOSTLY_Q4_0
    blockElements: BLOCK,
    blockBytes: bytes,
    dtype: null,
    holds: [],
    decode: (data, out) => {
      const view = viewOf(data);
      eachBlock(out.length, bytes, (at, base) => {
        const d = f16ToF32Ref(view.getUint16(at, true));
        for (let j = 0; j < BLOCK; j++) out[base + j] = f((nibble(data, at + 2, j) - 8) * d);
      });
    },
    encodeReference: referenceSymmetric(8, bytes, write),
    exact: fixedOffsetCodes(0, 15, 8, write),
  };
}

function q5_0Traits(): IntegerTraits {
  const bytes = 22;
  const write = (x: Int32Array, out: Uint8Array): void => {
    let qh = 0;
    for (let j = 0; j < BLOCK; j++) qh |= ((x[j]! >> 4) & 1) << j;
    viewOf(out).setUint32(2, qh >>> 0, true);
    packNibbles(x, out, 6);
  };
  return {
    id: 6,
    fileType: 8, // LLAMA_FTYPE_MOSTLY_Q5_0
    blockElements: BLOCK,
    blockBytes: bytes,
    dtype: null,
    holds: [],
    decode: (data, out) => {
      const view = viewOf(data);
      eachBlock(out.length, bytes, (at, base) => {
        const d = f16ToF32Ref(view.getUint16(at, true));
        const qh = view.getUint32(at + 2, true);
        for (let j = 0; j < BLOCK; j++) out[base + j] = f(((nibble(data, at + 6, j) | (((qh >>> j) & 1) << 4)) - 16) * d);
      });
    },
    encodeReference: referenceSymmetric(16, bytes, write),
    exact: fixedOffsetCodes(0, 31, 16, write),
  };
}

function q8_0Traits(): IntegerTraits {
  const bytes = 34;
  const write = (x: Int32Array, out: Uint8Array): void => {
    const view = viewOf(out);
    for (let j = 0; j < BLOCK; j++) view.setInt8(2 + j, x[j]!);
  };
  return {
    id: 8,
    fileType: 7, // LLAMA_FTYPE_MOSTLY_Q8_0
    blockElements: BLOCK,
    blockBytes: bytes,
    dtype: null,
    holds: [],
    decode: (data, out) => {
      const view = viewOf(data);
      eachBlock(out.length, bytes, (at, base) => {
        const d = f16ToF32Ref(view.getUint16(at, true));
        for (let j = 0; j < BLOCK; j++) out[base + j] = f(view.getInt8(at + 2 + j) * d);
      });
    },
    // d = amax / 127, x = round(w / d) (half away from zero)
    encodeReference: (w, out) => {
      const view = viewOf(out);
      eachBlock(w.length, bytes, (at, base) => {
        let amax = 0;
        for (let j = 0; j < BLOCK; j++) amax = Math.max(amax, Math.abs(w[base + j]!));
        const d = f(amax / 127);
        const id = d ? f(1 / d) : 0;
        view.setUint16(at, f32ToF16Ref(d), true);
        for (let j = 0; j < BLOCK; j++) view.setInt8(at + 2 + j, roundAway(f(w[base + j]! * id)));
      });
    },
    exact: fixedOffsetCodes(-128, 127, 0, write),
  };
}

function q4_1Traits(): IntegerTraits {
  const bytes = 20;
  const [min, max] = [0, 15];
  const x = new Int32Array(BLOCK);
  return {
    id: 3,
    fileType: 3, // LLAMA_FTYPE_MOSTLY_Q4_1
    blockElements: BLOCK,
    blockBytes: bytes,
    dtype: null,
    holds: [],
    decode: (data, out) => {
      const view = viewOf(data);
      eachBlock(out.length, bytes, (at, base) => {
        const d = f16ToF32Ref(view.getUint16(at, true));
        const m = f16ToF32Ref(view.getUint16(at + 2, true));
        for (let j = 0; j < BLOCK; j++) out[base + j] = f(f(nibble(data, at + 4, j) * d) + m);
      });
    },
    // d = (max − min) / 15, m = min, x = min(15, trunc((w − m)/d + ½))
    encodeReference: (w, out) => {
      const view = viewOf(out);
      eachBlock(w.length, bytes, (at, base) => {
        let lo = Infinity;
        let hi = -Infinity;
        for (let j = 0; j < BLOCK; j++) {
          lo = Math.min(lo, w[base + j]!);
          hi = Math.max(hi, w[base + j]!);
        }
        const d = f((hi - lo) / 15);
        const id = d ? f(1 / d) : 0;
        view.setUint16(at, f32ToF16Ref(d), true);
        view.setUint16(at + 2, f32ToF16Ref(lo), true);
        for (let j = 0; j < BLOCK; j++) x[j] = Math.min(15, Math.trunc(f(f(f(w[base + j]! - lo) * id) + 0.5)));
        packNibbles(x, out, at + 4);
      });
    },
    exact: {
      min,
      max,
      offset: null,
      // c ∈ [min − kmin, max − kmax]; the best makes m = −c·d an f16 value
      shift: (kmin, kmax, d, z) => {
        let best: number | null = null;
        let bestErr = Infinity;
        for (let c = min - kmin; c <= max - kmax; c++) {
          const m = f(-c * d);
          const err = Math.abs(f16ToF32Ref(f32ToF16Ref(m)) - m);
          if (best === null || err < bestErr || (err === bestErr && Math.abs(c - z) < Math.abs(best - z))) {
            best = c;
            bestErr = err;
          }
        }
        return best;
      },
      encode: (k, d, c, out) => {
        const view = viewOf(out);
        const m = f(-c * d);
        const mBits = f32ToF16Ref(m);
        for (let j = 0; j < BLOCK; j++) x[j] = k[j]! + c;
        view.setUint16(0, f32ToF16Ref(d), true);
        view.setUint16(2, mBits, true);
        packNibbles(x, out, 4);
        return f16ToF32Ref(mBits) === m;
      },
    },
  };
}

// ---------------------------------------------------------------------------------------------
// The table

/** Every ggml type the export writes, by name, in ggml id order. */
export const GGUF_TYPE_TRAITS = Object.freeze({
  F32: f32Traits(),
  F16: halfTraits(1, 1, 'f16'), // LLAMA_FTYPE_MOSTLY_F16
  Q4_0: q4_0Traits(),
  Q4_1: q4_1Traits(),
  Q5_0: q5_0Traits(),
  Q8_0: q8_0Traits(),
  BF16: halfTraits(30, 32, 'bf16'), // LLAMA_FTYPE_MOSTLY_BF16
});

type Table = typeof GGUF_TYPE_TRAITS;
export type GgmlTypeName = keyof Table;
/** The integer block types: those eqat's quantized linears can be written as. */
export type GgmlIntegerTypeName = { [K in GgmlTypeName]: Table[K] extends IntegerTraits ? K : never }[GgmlTypeName];

/** The integer block types, in table order. */
export const GGML_INTEGER_TYPES: readonly GgmlIntegerTypeName[] = (Object.keys(GGUF_TYPE_TRAITS) as GgmlTypeName[]).filter(
  (name): name is GgmlIntegerTypeName => GGUF_TYPE_TRAITS[name].exact !== null,
);

/** Whether `type` holds every block of codes k ∈ [kmin, kmax] exactly, whatever its (f16) scale. */
export function holdsEveryCode(type: GgmlIntegerTypeName, kmin: number, kmax: number): boolean {
  const codes = GGUF_TYPE_TRAITS[type].exact;
  return codes.offset !== null && codes.shift(kmin, kmax, 1, 0) !== null;
}

/** Bytes of a tensor of `type` with dims `ne` (innermost first). */
export function ggmlTensorBytes(type: GgmlTypeName, ne: readonly number[]): number {
  const { blockElements, blockBytes } = GGUF_TYPE_TRAITS[type];
  const n = ne.reduce((a, b) => a * b, 1);
  if (ne[0]! % blockElements !== 0) throw new RangeError(`ggmlTensorBytes: row length ${ne[0]} is not a multiple of ${type}'s block of ${blockElements}`);
  return (n / blockElements) * blockBytes;
}

/** w (a whole number of blocks) encoded as `type` with the reference rounding. */
export function encodeValues(type: GgmlTypeName, w: Float32Array): Uint8Array {
  const out = new Uint8Array(ggmlTensorBytes(type, [w.length]));
  GGUF_TYPE_TRAITS[type].encodeReference(w, out);
  return out;
}

/** The n values that data (of `type`) decodes to. */
export function decodeValues(type: GgmlTypeName, data: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  GGUF_TYPE_TRAITS[type].decode(data, out);
  return out;
}
