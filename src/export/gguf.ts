// Export of an eqat quantized checkpoint (GPTQ v2 layout, as `eqat block-ap` writes it) to a
// single GGUF v3 file for llama.cpp, without re-quantizing weights wherever a GGUF block type can
// hold them exactly. Every family eqat quantizes maps to a llama.cpp architecture (GGUF_ARCH):
// llama and mistral → "llama" (q/k/v/o and MLP biases when the checkpoint has them), qwen2 →
// "qwen2" (q/k/v biases), qwen3 → "qwen3" (per-head q/k RMSNorm); tied embeddings leave out
// output.weight, which llama.cpp then takes from token_embd.weight.
//
// The mapping. eqat's weights are Ŵ = (q − z)·s per group of G inputs (f16 s, integer z,
// s clamped to [1e-4, 1e4] as src/quant/primitives.ts does). GGUF's legacy block types hold 32
// consecutive inputs of one row with one f16 scale d, so for G a multiple of 32 every block
// lies inside one group and takes d = s, with x = q − z + c in the type's code range (the types,
// their layouts and the codes each holds exactly are in src/export/ggml-types.ts). Q4_0, Q5_0
// and Q8_0 hold q − z ∈ [−8, 7], [−16, 15] and [−128, 127] whatever the scale; Q4_1 is exact when
// some feasible shift c makes its min c·s an f16 value, otherwise the min is rounded (near-lossless).
// 'auto' picks the smallest type that holds every code of the bit width exactly: ≤ 3 bits → Q4_0,
// 4 → Q5_0, 5..8 → Q8_0 (exact for ≤ 7 bits; 8 bits when q − z fits); 'f32' stores every Ŵ as
// its f32 value (for checking a runtime: llama.cpp's CPU kernels round a linear's input to 8 bits
// before an integer type's dot products, and compute an F32 linear in float). A block that
// an explicitly chosen type cannot hold exactly is re-quantized from Ŵ with llama.cpp's reference
// rounding for that type. Every tensor written is decoded back and compared with eqat's own
// dequantized f32 weights; anything not exact is refused unless allowLossy, and the report gives
// the largest absolute difference (0 for exact mappings).
//
// Other tensors: norms and biases F32 (every source value exactly); embeddings and lm_head F16
// when that is exact (the source is f16, or f32/bf16 values that f16 holds exactly), otherwise
// in the source's own type (BF16/F32), or Q8_0 on request (lossy). llama.cpp's llama
// architecture rotates adjacent pairs of q/k features where Hugging Face rotates the two halves
// of each head, so for it q_proj and k_proj rows (and their biases) are permuted per head as
// convert_hf_to_gguf.py does (row h·D + 2i + j ← h·D + j·D/2 + i); qwen2 and qwen3 rotate halves
// as Hugging Face does (NEOX RoPE) and take the rows as they are. The permutation moves whole
// rows and blocks lie within rows, so it commutes with the mapping.
//
// File layout (GGUF v3, little endian): magic "GGUF", version, tensor count (u64), kv count
// (u64), the metadata key/values, the tensor infos (name, dims innermost first, ggml type, offset
// into the data section), padding to 32 bytes, then each tensor's data at a 32-byte aligned
// offset. Nothing is written until every check has passed (two passes over the weights when the
// export must prove exactness first); the file appears under its name by a final rename.
import { closeSync, existsSync, openSync, renameSync, rmSync, statSync, writeSync } from 'node:fs';
import { basename, dirname, resolve } from 'node:path';
import { WeightSource, checkFinite, readQuantLinear } from '../model/weights.js';
import { Tensor } from '../engine/tensor.js';
import { BLOCK_LINEARS, HF_PARAM_NAME, linearDims, type BlockLinear, type BlockParamName } from '../model/block.js';
import type { ModelConfig, ModelType } from '../model/config.js';
import { ropeInvFreq } from '../model/rope.js';
import { clampScale, dequantize, qmax, roundZero } from '../quant/primitives.js';
import { f16ToF32Ref, f32ToF16Ref, toF32 } from '../engine/dtype.js';
import type { QuantConfig } from '../quant/checkpoint-config.js';
import { ggufTokenizerMetadata } from './gguf-tokenizer.js';
import { claimOutput, type OutputClaim } from '../io/output.js';
import {
  GGML_INTEGER_TYPES,
  GGUF_TYPE_TRAITS,
  bytesOf,
  decodeValues,
  encodeValues,
  ggmlTensorBytes,
  holdsEveryCode,
  type FloatDtype,
  type GgmlIntegerTypeName,
  type GgmlTypeName,
} from './ggml-types.js';

/** Types the embeddings and lm_head can be written as. */
const EMBEDDING_TYPES = ['F16', 'BF16', 'F32', 'Q8_0'] as const;
type EmbeddingType = (typeof EMBEDDING_TYPES)[number];

/**
 * Types the quantized linears can be written as: an integer block type, or F32, every weight its
 * exact value (no low-bit storage: for checking a runtime against eqat, see GgufExportOptions.type).
 */
type LinearTypeName = GgmlIntegerTypeName | 'F32';

/** The values of GgufExportOptions.type, the default first (the CLI's --gguf-type choices). */
export const GGUF_TYPE_CHOICES = ['auto', ...GGML_INTEGER_TYPES.map((t) => t.toLowerCase() as Lowercase<GgmlIntegerTypeName>), 'f32'] as const;
/** The values of GgufExportOptions.embeddingType, the default first (the CLI's --embedding-type choices). */
export const GGUF_EMBEDDING_CHOICES = ['auto', ...EMBEDDING_TYPES.map((t) => t.toLowerCase() as Lowercase<EmbeddingType>)] as const;

export interface GgufExportOptions {
  /**
   * Weight type for quantized linears: 'auto' picks the exact mapping per bit width (≤3 bits →
   * Q4_0, 4 → Q5_0, 5..8 → Q8_0); 'q4_1' for 4-bit (near-lossless, smaller); lossy choices need
   * allowLossy. 'f32' writes every weight as its exact f32 value (8 to 16 times the size of the
   * integer types): llama.cpp then computes these linears in float as eqat does, where with an
   * integer type its CPU kernels round each activation row to 8 bits per block of 32 first (Q8_0 /
   * Q8_1). It is for checking a runtime against eqat, not for deployment.
   */
  type?: (typeof GGUF_TYPE_CHOICES)[number];
  allowLossy?: boolean;
  /**
   * Embeddings / lm_head storage: 'auto' (default) is f16 when f16 holds the source values
   * exactly and the source's own type (bf16/f32) otherwise, so a bf16 checkpoint keeps BF16;
   * 'f16', 'bf16' and 'f32' force those, 'q8_0' is smaller (lossy).
   */
  embeddingType?: (typeof GGUF_EMBEDDING_CHOICES)[number];
  /** Replace an existing output file (src/io/output.ts: otherwise it is refused). */
  force?: boolean;
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

// ---------------------------------------------------------------------------------------------
// Block encoding of quantized linears

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

/** Why blocks of a linear were not mapped exactly. */
interface EncodeNotes {
  requantized: number;
  roundedMin: number;
}

/**
 * Encodes one quantized linear (codes q (O, I), scale/zero (O, I/G)) as `type`, rows in the
 * order `perm` gives (perm[r] = source row of written row r). `ref` receives eqat's dequantized
 * weights in the written row order; a float type stores `ref` itself.
 */
function encodeLinear(
  type: LinearTypeName,
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
  const traits = GGUF_TYPE_TRAITS[type];
  const notes: EncodeNotes = { requantized: 0, roundedMin: 0 };
  if (traits.exact === null) {
    for (let r = 0; r < O; r++) {
      const src = perm ? perm[r]! : r;
      ref.set(deq.subarray(src * I, (src + 1) * I), r * I);
    }
    return { data: encodeValues(type, ref), notes };
  }
  const n = traits.blockElements;
  const bytes = traits.blockBytes;
  const blocksPerRow = I / n;
  const data = new Uint8Array(O * blocksPerRow * bytes);
  const k = new Int32Array(n);
  for (let r = 0; r < O; r++) {
    const src = perm ? perm[r]! : r;
    ref.set(deq.subarray(src * I, (src + 1) * I), r * I);
    for (let b = 0; b < blocksPerRow; b++) {
      const g = Math.floor((b * n) / G);
      const s = clampScale(lin.scale[src * groups + g]!);
      const z = roundZero(lin.zero[src * groups + g]!, qm);
      const sExact = f16ToF32Ref(f32ToF16Ref(s)) === s;
      let kmin = Infinity;
      let kmax = -Infinity;
      for (let j = 0; j < n; j++) {
        const kk = lin.q[src * I + b * n + j]! - z;
        k[j] = kk;
        if (kk < kmin) kmin = kk;
        if (kk > kmax) kmax = kk;
      }
      const at = (r * blocksPerRow + b) * bytes;
      const block = data.subarray(at, at + bytes);
      const c = sExact ? traits.exact.shift(kmin, kmax, s, z) : null;
      if (c === null) {
        traits.encodeReference(deq.subarray(src * I + b * n, src * I + (b + 1) * n), block);
        notes.requantized++;
      } else if (!traits.exact.encode(k, s, c, block)) {
        notes.roundedMin++;
      }
    }
  }
  return { data, notes };
}

// ---------------------------------------------------------------------------------------------
// Embeddings / lm_head

/** Source values in f32 and the raw storage, for an F32/F16/BF16 safetensors tensor. */
function readFloatTensor(src: WeightSource, name: string): { f32: Float32Array; dtype: FloatDtype; raw: Float32Array | Uint16Array } {
  const t = src.safetensors.readTensor(name);
  checkFinite(src.safetensors.info(name).file, name, t);
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

/**
 * Encodes a float tensor of `cols` columns as `want`: the source bytes as they are when the type
 * has the source's dtype, no check when the type holds every value of that dtype, otherwise the
 * reference encoding decoded back and compared. 'auto' is F16 when that is exact, else the type
 * of the source's own dtype.
 */
function encodeFloatTensor(
  want: 'auto' | EmbeddingType,
  t: { f32: Float32Array; dtype: FloatDtype; raw: Float32Array | Uint16Array },
  cols: number,
): { type: EmbeddingType; data: Uint8Array; maxErr: number } {
  if (want === 'auto') {
    const h = encodeFloatTensor('F16', t, cols);
    if (h.maxErr === 0) return h;
    return encodeFloatTensor(EMBEDDING_TYPES.find((type) => GGUF_TYPE_TRAITS[type].dtype === t.dtype)!, t, cols);
  }
  const traits = GGUF_TYPE_TRAITS[want];
  if (cols % traits.blockElements !== 0) {
    throw new RangeError(`exportGguf: embeddingType '${want.toLowerCase()}' needs hidden_size (${cols}) to be a multiple of ${traits.blockElements}`);
  }
  if (traits.dtype === t.dtype) return { type: want, data: bytesOf(t.raw), maxErr: 0 };
  const data = encodeValues(want, t.f32);
  const maxErr = traits.holds.includes(t.dtype) ? 0 : maxAbsDiff(decodeValues(want, data, t.f32.length), t.f32);
  return { type: want, data, maxErr };
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

/**
 * The llama.cpp architecture of each family, whether its RoPE rotates adjacent feature pairs
 * (q/k rows permuted) and the block parameters besides linears and the two norms that it loads.
 */
const GGUF_ARCH: Record<ModelType, { arch: string; pairRope: boolean; extras: readonly BlockParamName[] }> = {
  llama: { arch: 'llama', pairRope: true, extras: ['qBias', 'kBias', 'vBias', 'oBias', 'gateBias', 'upBias', 'downBias'] },
  mistral: { arch: 'llama', pairRope: true, extras: [] },
  qwen2: { arch: 'qwen2', pairRope: false, extras: ['qBias', 'kBias', 'vBias'] },
  qwen3: { arch: 'qwen3', pairRope: false, extras: ['qNorm', 'kNorm'] },
};

/** GGUF names of the block parameters besides linears and the two norms. */
const EXTRA_GGUF_NAME: Partial<Record<BlockParamName, string>> = {
  qBias: 'attn_q.bias',
  kBias: 'attn_k.bias',
  vBias: 'attn_v.bias',
  oBias: 'attn_output.bias',
  gateBias: 'ffn_gate.bias',
  upBias: 'ffn_up.bias',
  downBias: 'ffn_down.bias',
  qNorm: 'attn_q_norm.weight',
  kNorm: 'attn_k_norm.weight',
};

/** The block parameters besides linears and the two norms that `cfg` has. */
function extraParams(cfg: ModelConfig): BlockParamName[] {
  const has: BlockParamName[] = [];
  if (cfg.qkvBias) has.push('qBias', 'kBias', 'vBias');
  if (cfg.oBias) has.push('oBias');
  if (cfg.mlpBias) has.push('gateBias', 'upBias', 'downBias');
  if (cfg.qkNorm) has.push('qNorm', 'kNorm');
  return has;
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

/**
 * The type of the quantized linears: the one asked for, or for 'auto' the smallest per weight
 * that holds every code q − z ∈ [−qmax, qmax] of the bit width exactly whatever the scales, and
 * when none does (8 bits) the one with the widest code range.
 */
function linearTypeFor(type: NonNullable<GgufExportOptions['type']>, bits: number): LinearTypeName {
  if (type !== 'auto') return type.toUpperCase() as LinearTypeName;
  const qm = qmax(bits);
  const bytesPerWeight = (t: GgmlIntegerTypeName): number => GGUF_TYPE_TRAITS[t].blockBytes / GGUF_TYPE_TRAITS[t].blockElements;
  const codeSpan = (t: GgmlIntegerTypeName): number => GGUF_TYPE_TRAITS[t].exact.max - GGUF_TYPE_TRAITS[t].exact.min;
  const exact = GGML_INTEGER_TYPES.filter((t) => holdsEveryCode(t, -qm, qm));
  if (exact.length > 0) return exact.reduce((a, b) => (bytesPerWeight(b) < bytesPerWeight(a) ? b : a));
  return GGML_INTEGER_TYPES.reduce((a, b) => (codeSpan(b) > codeSpan(a) ? b : a));
}

/** Option values as a message lists them: 'a', 'b' or 'c'. */
function choiceList(values: readonly string[]): string {
  const quoted = values.map((v) => `'${v}'`);
  return `${quoted.slice(0, -1).join(', ')} or ${quoted[quoted.length - 1]}`;
}

/** Checks everything about the model that can be checked without reading weights. */
function checkModel(modelDir: string, cfg: ModelConfig, quant: QuantConfig | null): asserts quant is QuantConfig {
  const what = `exportGguf: ${modelDir}`;
  const { arch, extras } = GGUF_ARCH[cfg.modelType];
  const missing = extraParams(cfg).filter((p) => !extras.includes(p));
  if (missing.length > 0) {
    throw new Error(
      `${what}: ${missing.map((p) => HF_PARAM_NAME[p]).join(', ')} of a ${cfg.modelType} checkpoint have no place in llama.cpp's "${arch}" architecture`,
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
  for (const [name, dim] of [
    ['hidden_size', cfg.hiddenSize],
    ['intermediate_size', cfg.intermediateSize],
    ['num_attention_heads*head_dim', cfg.numHeads * cfg.headDim],
  ] as const) {
    if (dim % 32 !== 0) throw new Error(`${what}: ${name} = ${dim} is not a multiple of 32 (GGUF block size)`);
  }
}

/** The llama.* and general.* metadata. */
function modelMetadata(modelDir: string, cfg: ModelConfig, linearType: LinearTypeName): GgufKv[] {
  const { arch } = GGUF_ARCH[cfg.modelType];
  const u32 = (key: string, value: number): GgufKv => ({ key, value: { type: 'u32', value } });
  const f32 = (key: string, value: number): GgufKv => ({ key, value: { type: 'f32', value } });
  // llama.cpp's llama, qwen2 and qwen3 architectures have no sliding window: a window shorter
  // than the context is honoured by capping the context length at the window.
  const context = cfg.slidingWindow !== null ? Math.min(cfg.maxPositionEmbeddings, cfg.slidingWindow) : cfg.maxPositionEmbeddings;
  const kv: GgufKv[] = [
    { key: 'general.architecture', value: { type: 'str', value: arch } },
    { key: 'general.name', value: { type: 'str', value: basename(resolve(modelDir)) } },
    u32('general.file_type', GGUF_TYPE_TRAITS[linearType].fileType),
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
    head.u32(GGUF_TYPE_TRAITS[t.type].id);
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
  const typeOpt = opts.type ?? GGUF_TYPE_CHOICES[0];
  if (!(GGUF_TYPE_CHOICES as readonly string[]).includes(typeOpt)) {
    throw new RangeError(`exportGguf: type must be ${choiceList(GGUF_TYPE_CHOICES)}, got ${JSON.stringify(typeOpt)}`);
  }
  const embOpt = opts.embeddingType ?? GGUF_EMBEDDING_CHOICES[0];
  if (!(GGUF_EMBEDDING_CHOICES as readonly string[]).includes(embOpt)) {
    throw new RangeError(`exportGguf: embeddingType must be ${choiceList(GGUF_EMBEDDING_CHOICES)}, got ${JSON.stringify(embOpt)}`);
  }
  const embWant = embOpt === 'auto' ? 'auto' : (embOpt.toUpperCase() as EmbeddingType);
  const allowLossy = opts.allowLossy === true;
  const out = resolve(outPath);
  if (!existsSync(dirname(out))) throw new Error(`exportGguf: output directory ${dirname(out)} does not exist`);
  if (existsSync(out) && statSync(out).isDirectory()) throw new Error(`exportGguf: output path ${out} is a directory`);

  const src = WeightSource.open(modelDir);
  let output: OutputClaim | null = null;
  try {
    const inputs = [{ flag: '--model', path: modelDir }];
    output = claimOutput({ out: outPath, flag: '--out', force: opts.force ?? false, inputs, command: 'eqat export --format gguf', companions: [out + '.partial'], resumable: false });
    const cfg = src.cfg;
    const quant = src.quant;
    checkModel(modelDir, cfg, quant);
    src.checkTensors();
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
        return encodeFloatTensor('auto', readFloatTensor(src, hfName), cols).type;
      };
      const type = plannedType();
      tensors.push({
        name,
        ne: [cols, rows],
        type,
        produce: () => {
          const t = readFloatTensor(src, hfName);
          if (t.f32.length !== rows * cols) throw new Error(`exportGguf: ${hfName} has ${t.f32.length} values, the config implies ${rows}x${cols}`);
          const r = encodeFloatTensor(type, t, cols);
          return { data: r.data, maxErr: r.maxErr, reason: r.maxErr > 0 ? `${t.dtype} values stored as ${type}` : '' };
        },
      });
    };
    // norms and biases: F32 holds every source value
    const normTensor = (name: string, hfName: string, n: number, perm: Int32Array | null = null): void => {
      tensors.push({
        name,
        ne: [n],
        type: 'F32',
        produce: () => {
          const v = st.readF32(hfName);
          checkFinite(st.info(hfName).file, hfName, Tensor.fromF32(v));
          if (v.length !== n) throw new Error(`exportGguf: ${hfName} has ${v.length} values, expected ${n}`);
          return { data: bytesOf(perm ? Float32Array.from(perm, (src) => v[src]!) : v), maxErr: 0, reason: '' };
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
    const pairRope = GGUF_ARCH[cfg.modelType].pairRope;
    const qPerm = pairRope ? qkRowPermutation(cfg.numHeads, cfg.headDim) : null;
    const kPerm = pairRope ? qkRowPermutation(cfg.numKvHeads, cfg.headDim) : null;
    const extras = extraParams(cfg);
    for (let i = 0; i < cfg.numLayers; i++) {
      const prefix = `model.layers.${i}.`;
      normTensor(`blk.${i}.attn_norm.weight`, prefix + 'input_layernorm.weight', C);
      for (const p of extras) {
        const n = p === 'qNorm' || p === 'kNorm' ? cfg.headDim : linearDims(cfg, p.slice(0, -'Bias'.length) as BlockLinear)[0];
        normTensor(`blk.${i}.${EXTRA_GGUF_NAME[p]!}`, prefix + HF_PARAM_NAME[p], n, p === 'qBias' ? qPerm : p === 'kBias' ? kPerm : null);
      }
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
            const maxErr = maxAbsDiff(decodeValues(linearType, data, O * I), ref);
            const reasons: string[] = [];
            if (notes.requantized) reasons.push(`${notes.requantized} of ${(O * I) / GGUF_TYPE_TRAITS[linearType].blockElements} blocks re-quantized (${quant.bits}-bit codes do not fit ${linearType} with d = s)`);
            if (notes.roundedMin) reasons.push(`${notes.roundedMin} blocks with the ${linearType} min rounded to f16`);
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
    output?.release();
  }
}

