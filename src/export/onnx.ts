// Export of an eqat quantized checkpoint (GPTQ v2 layout, as `eqat block-ap` writes it) to an
// ONNX decoder with key/value cache, in the layout transformers.js (@huggingface/transformers)
// and onnxruntime-genai load:
//
//   OUT/onnx/model_q4.onnx   (2-bit checkpoints: model_q2.onnx; 8-bit: model_quantized.onnx)
//   OUT/config.json          the checkpoint's config without quantization_config, plus
//                            "transformers.js_config": {"dtype": "q4" | "q2" | "q8"} so the
//                            file above is the one transformers.js picks by default
//   OUT/generation_config.json, tokenizer files, genai_config.json (onnxruntime-genai)
//   OUT/tokenizer_config.json the checkpoint's, with add_bos_token / add_eos_token saying what
//                            eqat's tokenizer adds (src/export/special-tokens.ts), so that
//                            transformers.js's text-generation pipeline adds the same tokens,
//                            and clean_up_tokenization_spaces as eqat decodes (src/io/tokenizer.ts
//                            CLEAN_UP_TOKENIZATION_SPACES_DEFAULT where the checkpoint is silent:
//                            transformers.js's own default differs)
//
// Graph interface (the names Optimum gives decoder-only exports and transformers.js feeds):
//   inputs  input_ids (int64 [batch_size, sequence_length]),
//           attention_mask (int64 [batch_size, total_sequence_length]),
//           position_ids (int64 [batch_size, sequence_length]),
//           past_key_values.{i}.key / .value (float32 [batch_size, Hkv, past_sequence_length, D])
//   outputs logits (float32 [batch_size, sequence_length, V]),
//           present.{i}.key / .value (float32 [batch_size, Hkv, total_sequence_length, D])
//
// Linear layers are com.microsoft.MatMulNBits (onnxruntime contrib op): Y = A · dequant(B)ᵀ with
// dequant = (q − zero_point) · scale per block of `block_size` inputs. B is uint8
// [N, K/block_size, block_size·bits/8], each row a little-endian bit stream of K codes (4 bits:
// two per byte, low nibble first; 2 bits: four per byte); scales float32 [N, K/block_size];
// zero_points uint8 [N, ceil(K/block_size · bits/8)] packed the same way. The codes, scales and
// zero points are eqat's own: the exported layer computes exactly eqat's (q − z)·s weights.
// 3-bit codes are stored as 4-bit values unchanged (MatMulNBits has no 3-bit layout). A group
// size that is not a power of two is split into power-of-two blocks sharing the group's scale.
//
// Everything else is standard ONNX (opset 17): RMSNorm as Mul/ReduceMean/Add/Sqrt/Reciprocal,
// RoPE (rotate-half convention) from cos/sin tables gathered at position_ids (the tables are
// eqat's, computed as transformers does in float32), grouped-query attention by viewing the
// query heads as (Hkv, H/Hkv) and broadcasting each key/value head over its group, a causal
// (and sliding-window) mask combined with attention_mask. Embeddings and lm_head keep the
// checkpoint's dtype (f16/bf16 + Cast, or f32).
//
// MatMulNBits runs with float32 activations by default (accuracy_level unset), so the graph
// reproduces eqat's forward to float rounding; `accuracyLevel: 4` lets onnxruntime quantize
// activations to int8 per block (faster on CPU, slightly less exact).
//
// Everything that can be checked is checked before anything is written; the output appears
// by a rename once complete. Models whose initializers would approach protobuf's 2 GiB limit
// are written with external data (onnx/model_q4.onnx_data, referenced from the graph, and
// "use_external_data_format" in transformers.js_config).
import { closeSync, existsSync, mkdirSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeSync, copyFileSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import type { ModelConfig } from '../model/config.js';
import { linearShape, linearPath, LINEAR_NAMES, type LinearName } from '../model/config.js';
import { WeightSource, checkFinite, readQuantLinear } from '../model/weights.js';
import { Tensor } from '../engine/tensor.js';
import { ropeTables } from '../model/rope.js';
import { clampScale, qmax, roundZero } from '../quant/primitives.js';
import type { QuantConfig } from '../quant/checkpoint-config.js';
import { TOKENIZER_FILES } from '../io/quant-checkpoint.js';
import { CLEAN_UP_TOKENIZATION_SPACES_DEFAULT } from '../io/tokenizer.js';
import { eqatVersion } from '../engine/version.js';
import { claimOutput, publishOutput, type OutputClaim } from '../io/output.js';
import { specialTokens } from './special-tokens.js';
import {
  encodeModel,
  MAX_PROTO_BYTES,
  ONNX_DTYPE,
  writeEncoded,
  type AttrValue,
  type NodeDef,
  type OnnxDtype,
  type TensorDef,
  type ValueInfoDef,
} from './onnx-proto.js';

export interface OnnxExportReport {
  /** The output directory (config, tokenizer, onnx/). */
  dir: string;
  onnxPath: string;
  /** Bytes of the .onnx file plus its external data file, if any. */
  bytes: number;
  /** Nodes in the graph. */
  nodes: number;
  /** The MatMulNBits `bits` attribute (3-bit checkpoints are stored as 4-bit). */
  bits: number;
  /** The MatMulNBits `block_size` attribute. */
  blockSize: number;
  /** The checkpoint's bits and group size. */
  checkpointBits: number;
  groupSize: number;
  /** The external data file, or null when every initializer is inside the .onnx file. */
  externalDataPath: string | null;
}

export interface OnnxExportOptions {
  /**
   * Put initializers in onnx/<model>.onnx_data: 'auto' (default) does so when they would take
   * more than 1.75 GiB (protobuf refuses files of 2 GiB).
   */
  externalData?: boolean | 'auto';
  /**
   * MatMulNBits accuracy_level: 0 (default, unset: float32 activations, exact eqat weights) or
   * 4 (onnxruntime may quantize activations to int8 per block: faster on CPU, less exact).
   */
  accuracyLevel?: 0 | 4;
  /** Replace an existing output directory once the new one is complete (src/io/output.ts: otherwise it is refused). */
  force?: boolean;
}

const OPSET = 17;
const IR_VERSION = 8; // the IR version of opset 17
const MS_DOMAIN = 'com.microsoft';
const F32_LOWEST = -3.4028234663852886e38;
/** External-data offsets are aligned to this (mmap-friendly, as the ONNX spec recommends). */
const EXTERNAL_ALIGN = 4096;
/** Initializers smaller than this stay inside the model file even with external data. */
const EXTERNAL_MIN_BYTES = 1024;
/** 'auto' switches to external data above this many initializer bytes (headroom under 2 GiB). */
const AUTO_EXTERNAL_BYTES = 1.75 * 2 ** 30;

// ---------------------------------------------------------------------------------------------
// MatMulNBits packing

/** How a checkpoint's codes are laid out for MatMulNBits. */
export interface NBitsLayout {
  /** Storage bits (2, 4 or 8). */
  bits: number;
  /** block_size: a power of two >= 16 that divides the group size. */
  blockSize: number;
}

/** The MatMulNBits layout of a checkpoint with `bits` bits and group size G; throws if none exists. */
export function nbitsLayout(bits: number, G: number): NBitsLayout {
  const op = 'exportOnnx';
  const storage = bits === 2 ? 2 : bits === 3 || bits === 4 ? 4 : bits === 8 ? 8 : 0;
  if (!storage) throw new RangeError(`${op}: ${bits}-bit checkpoints are not supported (2, 3, 4 or 8 bits)`);
  let block = 1;
  while (G % (block * 2) === 0) block *= 2;
  if (block < 16) {
    throw new RangeError(
      `${op}: group size ${G} cannot be expressed as MatMulNBits blocks (block_size must be a power of two >= 16 dividing the group size; the largest power of two dividing ${G} is ${block})`,
    );
  }
  return { bits: storage, blockSize: Math.min(block, G) };
}

export interface PackedNBits {
  /** uint8 (N, kBlocks, blob) */
  B: Uint8Array;
  /** float32 (N, kBlocks) */
  scales: Float32Array;
  /** uint8 (N, zpCols) */
  zeroPoints: Uint8Array;
  kBlocks: number;
  blob: number;
  zpCols: number;
}

/**
 * Packs eqat codes q (O, I), scales and zero points (O, I/G) into MatMulNBits inputs with
 * N = O, K = I. Scales and zero points are the clamped/rounded values eqat's dequantization
 * uses, so MatMulNBits reproduces eqat's weights exactly.
 */
export function packMatMulNBits(
  q: Uint8Array, // (O, I)
  scale: Float32Array, // (O, I/G)
  zero: Float32Array, // (O, I/G)
  O: number,
  I: number,
  G: number,
  sourceBits: number,
  layout: NBitsLayout,
): PackedNBits {
  const op = 'packMatMulNBits';
  const { bits, blockSize } = layout;
  if (I % G !== 0 || G % blockSize !== 0) throw new RangeError(`${op}: G = ${G} must divide I = ${I} and be a multiple of block_size ${blockSize}`);
  const groups = I / G;
  if (q.length !== O * I) throw new RangeError(`${op}: q has ${q.length} elements, expected O*I = ${O * I}`);
  if (scale.length !== O * groups || zero.length !== O * groups) {
    throw new RangeError(`${op}: scale/zero must have O*I/G = ${O * groups} elements, got ${scale.length}/${zero.length}`);
  }
  const qm = qmax(sourceBits);
  const kBlocks = I / blockSize;
  const rep = G / blockSize;
  const blob = (blockSize * bits) / 8;
  const rowBytes = kBlocks * blob; // = I * bits / 8
  const zpCols = Math.ceil((kBlocks * bits) / 8);
  const B = new Uint8Array(O * rowBytes);
  const scales = new Float32Array(O * kBlocks);
  const zeroPoints = new Uint8Array(O * zpCols);
  const perByte = 8 / bits;
  for (let n = 0; n < O; n++) {
    const qRow = n * I;
    const bRow = n * rowBytes;
    if (bits === 8) {
      B.set(q.subarray(qRow, qRow + I), bRow);
    } else {
      for (let k = 0; k < I; k++) {
        B[bRow + Math.floor(k / perByte)]! |= q[qRow + k]! << ((k % perByte) * bits);
      }
    }
    for (let b = 0; b < kBlocks; b++) {
      const g = n * groups + Math.floor(b / rep);
      scales[n * kBlocks + b] = clampScale(scale[g]!);
      const z = roundZero(zero[g]!, qm);
      zeroPoints[n * zpCols + Math.floor(b / perByte)]! |= z << ((b % perByte) * bits);
    }
  }
  return { B, scales, zeroPoints, kBlocks, blob, zpCols };
}

// ---------------------------------------------------------------------------------------------
// Initializer storage: inline, or appended to an external data file as the graph is built.

class InitializerSink {
  private fd: number | null = null;
  private offset = 0;
  /** Bytes held inline (inside the .onnx file). */
  inlineBytes = 0;

  constructor(
    private readonly externalPath: string | null, // absolute path of the data file
    private readonly externalName: string, // as written in the graph (relative to the model)
  ) {
    if (externalPath) this.fd = openSync(externalPath, 'w');
  }

  place(name: string, dtype: OnnxDtype, dims: number[], bytes: Uint8Array): TensorDef {
    if (this.fd === null || bytes.length < EXTERNAL_MIN_BYTES) {
      this.inlineBytes += bytes.length;
      return { name, dtype, dims, data: bytes };
    }
    const pad = (EXTERNAL_ALIGN - (this.offset % EXTERNAL_ALIGN)) % EXTERNAL_ALIGN;
    if (pad) {
      writeAllFd(this.fd, new Uint8Array(pad));
      this.offset += pad;
    }
    const at = this.offset;
    writeAllFd(this.fd, bytes);
    this.offset += bytes.length;
    return { name, dtype, dims, data: { location: this.externalName, offset: at, length: bytes.length } };
  }

  get externalBytes(): number {
    return this.offset;
  }

  close(): void {
    if (this.fd !== null) closeSync(this.fd);
    this.fd = null;
  }
}

function writeAllFd(fd: number, b: Uint8Array): void {
  let o = 0;
  while (o < b.length) o += writeSync(fd, b, o, b.length - o);
}

function bytesOf(a: Float32Array | Uint16Array | Uint8Array | BigInt64Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

// ---------------------------------------------------------------------------------------------
// Graph construction

class GraphBuilder {
  readonly nodes: NodeDef[] = [];
  readonly initializers: TensorDef[] = [];
  private readonly nodeNames = new Set<string>();
  private readonly constants = new Map<string, string>();

  constructor(private readonly sink: InitializerSink) {}

  /** Adds a node named `name` (made unique); returns its output names. */
  node(
    opType: string,
    name: string,
    inputs: string[],
    { attrs, domain, outputs }: { attrs?: Record<string, AttrValue>; domain?: string; outputs?: number | string[] } = {},
  ): string[] {
    let unique = name;
    for (let k = 1; this.nodeNames.has(unique); k++) unique = `${name}_${k}`;
    this.nodeNames.add(unique);
    const outNames = Array.isArray(outputs)
      ? outputs
      : Array.from({ length: outputs ?? 1 }, (_, k) => `${unique}/output_${k}`);
    const def: NodeDef = { opType, name: unique, inputs, outputs: outNames };
    if (attrs) def.attrs = attrs;
    if (domain) def.domain = domain;
    this.nodes.push(def);
    return outNames;
  }

  /** Single-output node; the node name is scope/opType unless given. */
  op(scope: string, opType: string, inputs: string[], attrs?: Record<string, AttrValue>, name?: string): string {
    const opts: { attrs?: Record<string, AttrValue> } = {};
    if (attrs) opts.attrs = attrs;
    return this.node(opType, `${scope}/${name ?? opType}`, inputs, opts)[0]!;
  }

  initializer(name: string, dtype: OnnxDtype, dims: number[], bytes: Uint8Array): string {
    this.initializers.push(this.sink.place(name, dtype, dims, bytes));
    return name;
  }

  /** An int64 constant (cached by value); scalar when `dims` is []. */
  i64(values: number[], dims: number[] = [values.length]): string {
    const key = `i64:${dims.join('x')}:${values.join(',')}`;
    let name = this.constants.get(key);
    if (!name) {
      name = `/const/i64_${this.constants.size}`;
      const data = BigInt64Array.from(values.map((v) => BigInt(v)));
      this.initializer(name, ONNX_DTYPE.INT64, dims, bytesOf(data));
      this.constants.set(key, name);
    }
    return name;
  }

  /** A float32 scalar constant (cached by value). */
  f32(value: number): string {
    const key = `f32:${Math.fround(value)}`;
    let name = this.constants.get(key);
    if (!name) {
      name = `/const/f32_${this.constants.size}`;
      this.initializer(name, ONNX_DTYPE.FLOAT, [], bytesOf(Float32Array.of(value)));
      this.constants.set(key, name);
    }
    return name;
  }
}

/** Everything the graph needs that is shared by the layers. */
interface Shared {
  cosU: string; // (B, S, 1, D/2)
  sinU: string; // (B, S, 1, D/2)
  allowed: string; // bool (B, 1, 1, S, T): key j visible to query s
}

class DecoderExporter {
  readonly g: GraphBuilder;
  private readonly cfg: ModelConfig;
  private readonly quant: QuantConfig;
  private readonly layout: NBitsLayout;

  constructor(
    private readonly src: WeightSource,
    sink: InitializerSink,
    private readonly accuracyLevel: number,
  ) {
    this.g = new GraphBuilder(sink);
    this.cfg = src.cfg;
    this.quant = src.quant!;
    this.layout = nbitsLayout(this.quant.bits, this.quant.groupSize);
  }

  /** Reads a float tensor of the checkpoint as stored (f32, f16 or bf16). */
  private floatTensor(name: string, dims: number[]): { dtype: OnnxDtype; bytes: Uint8Array } {
    const t = this.src.safetensors.readTensor(name);
    checkFinite(this.src.safetensors.info(name).file, name, t);
    if (t.shape.length !== dims.length || t.shape.some((d, i) => d !== dims[i])) {
      throw new Error(`exportOnnx: ${this.src.dir}: tensor ${name} has shape [${t.shape.join(', ')}], the config implies [${dims.join(', ')}]`);
    }
    const dtype = t.dtype === 'f32' ? ONNX_DTYPE.FLOAT : t.dtype === 'f16' ? ONNX_DTYPE.FLOAT16 : t.dtype === 'bf16' ? ONNX_DTYPE.BFLOAT16 : null;
    if (dtype === null) throw new Error(`exportOnnx: ${this.src.dir}: tensor ${name} has dtype ${t.dtype}, expected a float type`);
    return { dtype, bytes: bytesOf(t.data as Float32Array | Uint16Array) };
  }

  /** A float32 initializer holding checkpoint tensor `name` converted to f32. */
  private f32Param(name: string, dims: number[]): string {
    const out = new Float32Array(dims.reduce((a, b) => a * b, 1));
    this.src.safetensors.readF32(name, out);
    checkFinite(this.src.safetensors.info(name).file, name, Tensor.fromF32(out));
    return this.g.initializer(name, ONNX_DTYPE.FLOAT, dims, bytesOf(out));
  }

  /** rmsnorm over the last axis: x · 1/sqrt(mean(x²) + eps) · w. */
  private rmsnorm(x: string, weight: string, scope: string): string {
    const g = this.g;
    const sq = g.op(scope, 'Mul', [x, x], undefined, 'Pow');
    const ms = g.op(scope, 'ReduceMean', [sq], { axes: { ints: [-1] }, keepdims: { i: 1 } });
    const ve = g.op(scope, 'Add', [ms, g.f32(this.cfg.rmsNormEps)]);
    const sd = g.op(scope, 'Sqrt', [ve]);
    const inv = g.op(scope, 'Reciprocal', [sd]);
    const nx = g.op(scope, 'Mul', [x, inv]);
    return g.op(scope, 'Mul', [nx, weight], undefined, 'Mul_weight');
  }

  /** MatMulNBits for linear `name` of layer i (plus its bias when the family has one). */
  private linear(x: string, i: number, name: LinearName, hasBias: boolean): string {
    const [O, I] = linearShape(this.cfg, name);
    const path = linearPath(i, name);
    const { q, scale, zero } = readQuantLinear(this.src.safetensors, this.quant, path, O, I);
    const p = packMatMulNBits(q, scale, zero, O, I, this.quant.groupSize, this.quant.bits, this.layout);
    const g = this.g;
    const B = g.initializer(`${path}.MatMulNBits.B`, ONNX_DTYPE.UINT8, [O, p.kBlocks, p.blob], p.B);
    const s = g.initializer(`${path}.MatMulNBits.scales`, ONNX_DTYPE.FLOAT, [O, p.kBlocks], bytesOf(p.scales));
    const z = g.initializer(`${path}.MatMulNBits.zero_points`, ONNX_DTYPE.UINT8, [O, p.zpCols], p.zeroPoints);
    const scope = `/${path.replaceAll('.', '/')}`;
    const attrs: Record<string, AttrValue> = { K: { i: I }, N: { i: O }, bits: { i: this.layout.bits }, block_size: { i: this.layout.blockSize } };
    if (this.accuracyLevel) attrs['accuracy_level'] = { i: this.accuracyLevel };
    const [y] = g.node('MatMulNBits', `${scope}/MatMulNBits`, [x, B, s, z], { domain: MS_DOMAIN, attrs });
    if (!hasBias) return y!;
    const bias = this.f32Param(`${path}.bias`, [O]);
    return g.op(scope, 'Add', [y!, bias], undefined, 'Add_bias');
  }

  /** x (B, S, h, D) rotated by the gathered tables (rotate-half convention). */
  private rope(x: string, sh: Shared, scope: string): string {
    const g = this.g;
    const half = this.cfg.headDim / 2;
    const [x1, x2] = g.node('Split', `${scope}/Split`, [x, g.i64([half, half])], { attrs: { axis: { i: -1 } }, outputs: 2 });
    const a = g.op(scope, 'Sub', [g.op(scope, 'Mul', [x1!, sh.cosU], undefined, 'Mul_x1cos'), g.op(scope, 'Mul', [x2!, sh.sinU], undefined, 'Mul_x2sin')]);
    const b = g.op(scope, 'Add', [g.op(scope, 'Mul', [x2!, sh.cosU], undefined, 'Mul_x2cos'), g.op(scope, 'Mul', [x1!, sh.sinU], undefined, 'Mul_x1sin')]);
    return g.op(scope, 'Concat', [a, b], { axis: { i: -1 } });
  }

  private shared(): Shared {
    const g = this.g;
    const cfg = this.cfg;
    const scope = '/model/shared';
    // RoPE tables (maxPos, D/2), gathered at position_ids → (B, S, D/2) → (B, S, 1, D/2)
    const maxPos = cfg.maxPositionEmbeddings;
    const { cos, sin } = ropeTables(cfg, 0, maxPos);
    const half = cfg.headDim / 2;
    const cosT = g.initializer('model.rotary_emb.cos_cache', ONNX_DTYPE.FLOAT, [maxPos, half], bytesOf(cos.f32));
    const sinT = g.initializer('model.rotary_emb.sin_cache', ONNX_DTYPE.FLOAT, [maxPos, half], bytesOf(sin.f32));
    const cosG = g.op(scope, 'Gather', [cosT, 'position_ids'], { axis: { i: 0 } }, 'Gather_cos');
    const sinG = g.op(scope, 'Gather', [sinT, 'position_ids'], { axis: { i: 0 } }, 'Gather_sin');
    const cosU = g.op(scope, 'Unsqueeze', [cosG, g.i64([2])], undefined, 'Unsqueeze_cos');
    const sinU = g.op(scope, 'Unsqueeze', [sinG, g.i64([2])], undefined, 'Unsqueeze_sin');

    // Mask: query s of this call sits at cache index P + s (P = T − S past entries); key j is
    // visible when j ≤ P + s, attention_mask[b, j] = 1 and, with a sliding window W, P + s − j < W.
    const mscope = '/model/attn_mask';
    const idsShape = g.op(mscope, 'Shape', ['input_ids'], undefined, 'Shape_ids');
    const S = g.op(mscope, 'Gather', [idsShape, g.i64([1], [])], { axis: { i: 0 } }, 'Gather_S');
    const maskShape = g.op(mscope, 'Shape', ['attention_mask'], undefined, 'Shape_mask');
    const T = g.op(mscope, 'Gather', [maskShape, g.i64([1], [])], { axis: { i: 0 } }, 'Gather_T');
    const P = g.op(mscope, 'Sub', [T, S], undefined, 'Sub_P');
    const zero = g.i64([0], []);
    const one = g.i64([1], []);
    const kpos = g.op(mscope, 'Range', [zero, T, one], undefined, 'Range_keys');
    const qpos = g.op(mscope, 'Range', [P, T, one], undefined, 'Range_queries');
    const kRow = g.op(mscope, 'Unsqueeze', [kpos, g.i64([0])], undefined, 'Unsqueeze_keys'); // (1, T)
    const qCol = g.op(mscope, 'Unsqueeze', [qpos, g.i64([1])], undefined, 'Unsqueeze_queries'); // (S, 1)
    let visible = g.op(mscope, 'LessOrEqual', [kRow, qCol], undefined, 'LessOrEqual_causal'); // (S, T)
    if (cfg.slidingWindow !== null) {
      const dist = g.op(mscope, 'Sub', [qCol, kRow], undefined, 'Sub_distance');
      const inWin = g.op(mscope, 'Less', [dist, g.i64([cfg.slidingWindow], [])], undefined, 'Less_window');
      visible = g.op(mscope, 'And', [visible, inWin], undefined, 'And_window');
    }
    const padOk = g.op(mscope, 'Cast', ['attention_mask'], { to: { i: ONNX_DTYPE.BOOL } }, 'Cast_mask'); // (B, T)
    const padU = g.op(mscope, 'Unsqueeze', [padOk, g.i64([1, 2, 3])], undefined, 'Unsqueeze_mask'); // (B, 1, 1, 1, T)
    const allowed = g.op(mscope, 'And', [visible, padU], undefined, 'And_mask'); // (B, 1, 1, S, T)
    return { cosU, sinU, allowed };
  }

  private layer(i: number, x: string, sh: Shared): string {
    const g = this.g;
    const cfg = this.cfg;
    const H = cfg.numHeads;
    const Hkv = cfg.numKvHeads;
    const D = cfg.headDim;
    const rep = H / Hkv;
    const base = `model.layers.${i}`;
    const scope = `/model/layers.${i}`;
    const ascope = `${scope}/self_attn`;

    const h = this.rmsnorm(x, this.f32Param(`${base}.input_layernorm.weight`, [cfg.hiddenSize]), `${scope}/input_layernorm`);
    const q = this.linear(h, i, 'q_proj', cfg.qkvBias);
    const k = this.linear(h, i, 'k_proj', cfg.qkvBias);
    const v = this.linear(h, i, 'v_proj', cfg.qkvBias);
    let q4 = g.op(ascope, 'Reshape', [q, g.i64([0, 0, H, D])], undefined, 'Reshape_q'); // (B, S, H, D)
    let k4 = g.op(ascope, 'Reshape', [k, g.i64([0, 0, Hkv, D])], undefined, 'Reshape_k'); // (B, S, Hkv, D)
    const v4 = g.op(ascope, 'Reshape', [v, g.i64([0, 0, Hkv, D])], undefined, 'Reshape_v');
    if (cfg.qkNorm) {
      q4 = this.rmsnorm(q4, this.f32Param(`${base}.self_attn.q_norm.weight`, [D]), `${ascope}/q_norm`);
      k4 = this.rmsnorm(k4, this.f32Param(`${base}.self_attn.k_norm.weight`, [D]), `${ascope}/k_norm`);
    }
    q4 = this.rope(q4, sh, `${ascope}/rotary_q`);
    k4 = this.rope(k4, sh, `${ascope}/rotary_k`);

    // cache: (B, Hkv, past + S, D)
    const kT = g.op(ascope, 'Transpose', [k4], { perm: { ints: [0, 2, 1, 3] } }, 'Transpose_k');
    const vT = g.op(ascope, 'Transpose', [v4], { perm: { ints: [0, 2, 1, 3] } }, 'Transpose_v');
    const [presentK] = g.node('Concat', `${ascope}/Concat_key`, [`past_key_values.${i}.key`, kT], {
      attrs: { axis: { i: 2 } },
      outputs: [`present.${i}.key`],
    });
    const [presentV] = g.node('Concat', `${ascope}/Concat_value`, [`past_key_values.${i}.value`, vT], {
      attrs: { axis: { i: 2 } },
      outputs: [`present.${i}.value`],
    });

    // grouped-query attention: queries as (B, Hkv, rep, S, D) against keys (B, Hkv, 1, D, T)
    const q5r = g.op(ascope, 'Reshape', [q4, g.i64([0, 0, Hkv, rep, D])], undefined, 'Reshape_q_groups');
    const q5 = g.op(ascope, 'Transpose', [q5r], { perm: { ints: [0, 2, 3, 1, 4] } }, 'Transpose_q');
    const k5 = g.op(ascope, 'Unsqueeze', [presentK!, g.i64([2])], undefined, 'Unsqueeze_k');
    const k5T = g.op(ascope, 'Transpose', [k5], { perm: { ints: [0, 1, 2, 4, 3] } }, 'Transpose_kT');
    const v5 = g.op(ascope, 'Unsqueeze', [presentV!, g.i64([2])], undefined, 'Unsqueeze_v');
    const scores = g.op(ascope, 'MatMul', [q5, k5T], undefined, 'MatMul_scores'); // (B, Hkv, rep, S, T)
    const scaled = g.op(ascope, 'Mul', [scores, g.f32(1 / Math.sqrt(D))], undefined, 'Mul_scale');
    const masked = g.op(ascope, 'Where', [sh.allowed, scaled, g.f32(F32_LOWEST)]);
    const probs = g.op(ascope, 'Softmax', [masked], { axis: { i: -1 } });
    const ctx = g.op(ascope, 'MatMul', [probs, v5], undefined, 'MatMul_values'); // (B, Hkv, rep, S, D)
    const ctxT = g.op(ascope, 'Transpose', [ctx], { perm: { ints: [0, 3, 1, 2, 4] } }, 'Transpose_ctx'); // (B, S, Hkv, rep, D)
    const ctx3 = g.op(ascope, 'Reshape', [ctxT, g.i64([0, 0, H * D])], undefined, 'Reshape_ctx');
    const o = this.linear(ctx3, i, 'o_proj', cfg.oBias);
    const x1 = g.op(scope, 'Add', [x, o], undefined, 'Add_attn_residual');

    const h2 = this.rmsnorm(x1, this.f32Param(`${base}.post_attention_layernorm.weight`, [cfg.hiddenSize]), `${scope}/post_attention_layernorm`);
    const gate = this.linear(h2, i, 'gate_proj', cfg.mlpBias);
    const up = this.linear(h2, i, 'up_proj', cfg.mlpBias);
    const mscope = `${scope}/mlp`;
    const act = g.op(mscope, 'Mul', [gate, g.op(mscope, 'Sigmoid', [gate])], undefined, 'Mul_silu');
    const prod = g.op(mscope, 'Mul', [act, up], undefined, 'Mul_up');
    const down = this.linear(prod, i, 'down_proj', cfg.mlpBias);
    return g.op(scope, 'Add', [x1, down], undefined, 'Add_mlp_residual');
  }

  build(): { inputs: ValueInfoDef[]; outputs: ValueInfoDef[] } {
    const g = this.g;
    const cfg = this.cfg;
    const C = cfg.hiddenSize;
    const V = cfg.vocabSize;

    const emb = this.floatTensor('model.embed_tokens.weight', [V, C]);
    const embName = g.initializer('model.embed_tokens.weight', emb.dtype, [V, C], emb.bytes);
    let x = g.op('/model/embed_tokens', 'Gather', [embName, 'input_ids'], { axis: { i: 0 } });
    if (emb.dtype !== ONNX_DTYPE.FLOAT) x = g.op('/model/embed_tokens', 'Cast', [x], { to: { i: ONNX_DTYPE.FLOAT } });

    const sh = this.shared();
    for (let i = 0; i < cfg.numLayers; i++) x = this.layer(i, x, sh);

    const normed = this.rmsnorm(x, this.f32Param('model.norm.weight', [C]), '/model/norm');
    // lm_head as Gemm(transB) on (B*S, C) rows: the weight stays (V, C) as stored (and shared
    // with the embedding when tied).
    let head = embName;
    let headDtype = emb.dtype;
    if (!cfg.tieWordEmbeddings) {
      const w = this.floatTensor('lm_head.weight', [V, C]);
      head = g.initializer('lm_head.weight', w.dtype, [V, C], w.bytes);
      headDtype = w.dtype;
    }
    if (headDtype !== ONNX_DTYPE.FLOAT) head = g.op('/lm_head', 'Cast', [head], { to: { i: ONNX_DTYPE.FLOAT } }, 'Cast_weight');
    const rows = g.op('/lm_head', 'Reshape', [normed, g.i64([-1, C])], undefined, 'Reshape_rows');
    const logits2 = g.op('/lm_head', 'Gemm', [rows, head], { transB: { i: 1 } });
    const outShape = g.op('/lm_head', 'Concat', [g.op('/lm_head', 'Shape', ['input_ids']), g.i64([V])], { axis: { i: 0 } });
    g.node('Reshape', '/lm_head/Reshape_logits', [logits2, outShape], { outputs: ['logits'] });

    const Hkv = cfg.numKvHeads;
    const D = cfg.headDim;
    const inputs: ValueInfoDef[] = [
      { name: 'input_ids', dtype: ONNX_DTYPE.INT64, shape: ['batch_size', 'sequence_length'] },
      { name: 'attention_mask', dtype: ONNX_DTYPE.INT64, shape: ['batch_size', 'total_sequence_length'] },
      { name: 'position_ids', dtype: ONNX_DTYPE.INT64, shape: ['batch_size', 'sequence_length'] },
    ];
    const outputs: ValueInfoDef[] = [{ name: 'logits', dtype: ONNX_DTYPE.FLOAT, shape: ['batch_size', 'sequence_length', V] }];
    for (let i = 0; i < cfg.numLayers; i++) {
      for (const kv of ['key', 'value']) {
        inputs.push({ name: `past_key_values.${i}.${kv}`, dtype: ONNX_DTYPE.FLOAT, shape: ['batch_size', Hkv, 'past_sequence_length', D] });
        outputs.push({ name: `present.${i}.${kv}`, dtype: ONNX_DTYPE.FLOAT, shape: ['batch_size', Hkv, 'total_sequence_length', D] });
      }
    }
    return { inputs, outputs };
  }
}

// ---------------------------------------------------------------------------------------------
// Checks before writing

/** The file name transformers.js looks for, by storage bits, and the dtype that selects it. */
export function onnxFileFor(bits: number): { file: string; dtype: string } {
  if (bits === 2) return { file: 'model_q2.onnx', dtype: 'q2' };
  if (bits === 4) return { file: 'model_q4.onnx', dtype: 'q4' };
  if (bits === 8) return { file: 'model_quantized.onnx', dtype: 'q8' };
  throw new RangeError(`onnxFileFor: no file name for ${bits}-bit storage`);
}

function estimateInitializerBytes(cfg: ModelConfig, layout: NBitsLayout, embBytes: number): number {
  let n = 0;
  for (const name of LINEAR_NAMES) {
    const [O, I] = linearShape(cfg, name);
    const kBlocks = I / layout.blockSize;
    n += O * ((I * layout.bits) / 8 + kBlocks * 4 + Math.ceil((kBlocks * layout.bits) / 8));
  }
  n *= cfg.numLayers;
  const headBytes = cfg.tieWordEmbeddings ? 0 : embBytes;
  return n + embBytes + headBytes + cfg.maxPositionEmbeddings * cfg.headDim * 4;
}

function checkOutDir(outDir: string): void {
  if (!existsSync(outDir)) return;
  if (!statSync(outDir).isDirectory()) throw new Error(`exportOnnx: outDir ${outDir} exists and is not a directory`);
  if (readdirSync(outDir).length > 0) throw new Error(`exportOnnx: outDir ${outDir} exists and is not empty; refusing to overwrite (pass --force to replace it)`);
}

// ---------------------------------------------------------------------------------------------
// Side files

function readJson(path: string): Record<string, unknown> {
  return JSON.parse(readFileSync(path, 'utf8')) as Record<string, unknown>;
}

function writeJson(path: string, v: unknown): void {
  writeFileSync(path, JSON.stringify(v, null, 2) + '\n');
}

function genaiConfig(cfg: ModelConfig, onnxRel: string, rawConfig: Record<string, unknown>): Record<string, unknown> {
  const eos = cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : cfg.eosTokenIds;
  const pad = typeof rawConfig['pad_token_id'] === 'number' ? rawConfig['pad_token_id'] : (cfg.eosTokenIds[0] ?? 0);
  return {
    model: {
      bos_token_id: cfg.bosTokenId ?? 0,
      context_length: cfg.maxPositionEmbeddings,
      decoder: {
        session_options: { log_id: 'onnxruntime-genai', provider_options: [] },
        filename: onnxRel,
        head_size: cfg.headDim,
        hidden_size: cfg.hiddenSize,
        inputs: {
          input_ids: 'input_ids',
          attention_mask: 'attention_mask',
          position_ids: 'position_ids',
          past_key_names: 'past_key_values.%d.key',
          past_value_names: 'past_key_values.%d.value',
        },
        outputs: { logits: 'logits', present_key_names: 'present.%d.key', present_value_names: 'present.%d.value' },
        num_attention_heads: cfg.numHeads,
        num_hidden_layers: cfg.numLayers,
        num_key_value_heads: cfg.numKvHeads,
      },
      eos_token_id: eos,
      pad_token_id: pad,
      type: cfg.modelType,
      vocab_size: cfg.vocabSize,
    },
    search: {
      do_sample: false,
      max_length: Math.min(cfg.maxPositionEmbeddings, 2048),
      min_length: 0,
      num_beams: 1,
      num_return_sequences: 1,
      // present.* are past + new entries (Concat), not a shared max-length buffer
      past_present_share_buffer: false,
      repetition_penalty: 1.0,
      temperature: 1.0,
      top_k: 1,
      top_p: 1.0,
    },
  };
}

// ---------------------------------------------------------------------------------------------

/**
 * Exports the quantized checkpoint in `modelDir` to `outDir` (which must not exist or be empty).
 * Writes outDir/onnx/model_q4.onnx (model_q2.onnx for 2-bit, model_quantized.onnx for 8-bit)
 * with config.json, generation_config.json, genai_config.json and the tokenizer files beside it.
 */
export async function exportOnnx(modelDir: string, outDir: string, opts: OnnxExportOptions = {}): Promise<OnnxExportReport> {
  const op = 'exportOnnx';
  outDir = resolve(outDir);
  const src = WeightSource.open(modelDir); // parses config.json: unsupported families fail here
  let output: OutputClaim | null = null;
  try {
    const cfg = src.cfg;
    const quant = src.quant;
    if (!quant) {
      throw new Error(
        `${op}: ${modelDir} is a full-precision checkpoint (no quantization_config in config.json); export a quantized one, e.g. the output of \`eqat block-ap\``,
      );
    }
    const layout = nbitsLayout(quant.bits, quant.groupSize);
    const accuracyLevel = opts.accuracyLevel ?? 0;
    if (accuracyLevel !== 0 && accuracyLevel !== 4) throw new RangeError(`${op}: accuracyLevel must be 0 or 4, got ${String(accuracyLevel)}`);
    for (const name of LINEAR_NAMES) {
      const [O, I] = linearShape(cfg, name);
      if (I % quant.groupSize !== 0) throw new Error(`${op}: group size ${quant.groupSize} does not divide in_features ${I} of ${name} (${O}x${I})`);
    }
    if (cfg.maxPositionEmbeddings < 1) throw new Error(`${op}: max_position_embeddings must be >= 1 for the RoPE tables`);
    src.checkTensors();
    if (!opts.force) checkOutDir(outDir);
    output = claimOutput({ out: outDir, flag: '--out', force: opts.force ?? false, inputs: [{ flag: '--model', path: modelDir }], command: 'eqat export --format onnx', companions: [`${outDir}.partial`], resumable: false });
    const embBytes = src.safetensors.info('model.embed_tokens.weight').byteLength;
    const external = opts.externalData === undefined || opts.externalData === 'auto'
      ? estimateInitializerBytes(cfg, layout, embBytes) > AUTO_EXTERNAL_BYTES
      : opts.externalData;

    // Build into OUT.partial, rename at the end.
    const { file, dtype } = onnxFileFor(layout.bits);
    const partial = `${outDir}.partial`;
    rmSync(partial, { recursive: true, force: true });
    mkdirSync(join(partial, 'onnx'), { recursive: true });
    const dataName = `${file}_data`;
    const sink = new InitializerSink(external ? join(partial, 'onnx', dataName) : null, dataName);
    let nodes: number;
    let bytes: number;
    let done = false;
    try {
      const ex = new DecoderExporter(src, sink, accuracyLevel);
      const { inputs, outputs } = ex.build();
      sink.close();
      const version = eqatVersion().eqat;
      const model = encodeModel({
        irVersion: IR_VERSION,
        opsets: [
          { domain: '', version: OPSET },
          { domain: MS_DOMAIN, version: 1 },
        ],
        producerName: 'eqat',
        producerVersion: version,
        docString: `eqat ${quant.bits}-bit g${quant.groupSize} quantized ${cfg.modelType} decoder (MatMulNBits)`,
        graph: { name: 'main_graph', nodes: ex.g.nodes, initializers: ex.g.initializers, inputs, outputs },
        metadata: { 'eqat.bits': String(quant.bits), 'eqat.group_size': String(quant.groupSize) },
      });
      if (model.length > MAX_PROTO_BYTES) {
        throw new Error(`${op}: the graph is ${model.length} bytes, over protobuf's 2 GiB limit; export with externalData: true`);
      }
      bytes = writeEncoded(join(partial, 'onnx', file), model) + sink.externalBytes;
      nodes = ex.g.nodes.length;
      done = true;
    } finally {
      sink.close();
      if (!done) rmSync(partial, { recursive: true, force: true });
    }

    // config.json: the checkpoint's, minus the GPTQ description, plus transformers.js settings
    const rawConfig = readJson(join(modelDir, 'config.json'));
    const config: Record<string, unknown> = { ...rawConfig };
    delete config['quantization_config'];
    const tjs: Record<string, unknown> = { ...((rawConfig['transformers.js_config'] as Record<string, unknown> | undefined) ?? {}), dtype };
    if (external) tjs['use_external_data_format'] = { [file]: 1 };
    else delete tjs['use_external_data_format'];
    config['transformers.js_config'] = tjs;
    writeJson(join(partial, 'config.json'), config);
    for (const f of TOKENIZER_FILES) if (existsSync(join(modelDir, f))) copyFileSync(join(modelDir, f), join(partial, f));
    if (existsSync(join(modelDir, 'tokenizer.json'))) {
      const tokCfgPath = join(modelDir, 'tokenizer_config.json');
      const { addBos, addEos } = specialTokens(modelDir);
      const tokCfg = existsSync(tokCfgPath) ? readJson(tokCfgPath) : {};
      writeJson(join(partial, 'tokenizer_config.json'), {
        clean_up_tokenization_spaces: CLEAN_UP_TOKENIZATION_SPACES_DEFAULT,
        ...tokCfg,
        add_bos_token: addBos,
        add_eos_token: addEos,
      });
    }
    if (!existsSync(join(partial, 'generation_config.json'))) {
      const gen: Record<string, unknown> = {};
      if (cfg.bosTokenId !== null) gen['bos_token_id'] = cfg.bosTokenId;
      if (cfg.eosTokenIds.length) gen['eos_token_id'] = cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : cfg.eosTokenIds;
      writeJson(join(partial, 'generation_config.json'), gen);
    }
    writeJson(join(partial, 'genai_config.json'), genaiConfig(cfg, `onnx/${file}`, rawConfig));

    publishOutput(output, partial);
    return {
      dir: outDir,
      onnxPath: join(outDir, 'onnx', file),
      bytes,
      nodes,
      bits: layout.bits,
      blockSize: layout.blockSize,
      checkpointBits: quant.bits,
      groupSize: quant.groupSize,
      externalDataPath: external ? join(outDir, 'onnx', dataName) : null,
    };
  } finally {
    src.close();
    output?.release();
  }
}
