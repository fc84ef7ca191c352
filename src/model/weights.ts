// Where a model's weights come from: a Hugging Face checkpoint directory, either full
// precision (f32/f16/bf16 safetensors) or an eqat/GPTQ quantized one (qweight/qzeros/scales
// in the GPTQ v2 layout, dequantized here exactly as (q − z)·s in f32).
//
// Weights are read one block at a time (lazy safetensors), so a model larger than RAM can be
// walked block by block. Before any of that, checkTensors compares every tensor a run will read
// (name, shape from config.json, a dtype eqat reads) with the file headers alone, so a broken
// last block is refused before block 0 is trained; and every floating-point tensor is checked
// for NaN/Inf as it is read, naming it.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tensor } from '../engine/tensor.js';
import { toF32 } from '../engine/dtype.js';
import { SafetensorsModel, type SafeDtype } from '../io/safetensors.js';
import { CheckpointError } from '../io/errors.js';
import { loadConfig } from '../io/hf-config.js';
import type { ModelConfig } from './config.js';
import { BLOCK_LINEARS, BLOCK_PARAM_NAMES, HF_PARAM_NAME, allocBlockParams, blockParamShapes, type BlockParams } from './block.js';
import { firstNonFinite } from '../ops/reduce.js';
import { readQuantConfig, type QuantConfig } from '../quant/checkpoint-config.js';
import { unpackQweight, unpackQzeros } from '../quant/gptq-pack.js';
import { dequantize } from '../quant/primitives.js';

export class WeightSource {
  readonly cfg: ModelConfig;
  readonly quant: QuantConfig | null;
  private readonly st: SafetensorsModel;

  private constructor(readonly dir: string, cfg: ModelConfig, quant: QuantConfig | null, st: SafetensorsModel) {
    this.cfg = cfg;
    this.quant = quant;
    this.st = st;
  }

  static open(dir: string): WeightSource {
    if (!existsSync(join(dir, 'config.json'))) {
      throw new Error(`${dir}: not a model directory (no config.json)`);
    }
    const cfg = loadConfig(dir);
    const quant = readQuantConfig(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')), join(dir, 'config.json'));
    const st = SafetensorsModel.open(dir);
    return new WeightSource(dir, cfg, quant, st);
  }

  close(): void {
    this.st.close();
  }

  private readInto(name: string, out: Tensor): void {
    readInto(this.st, this.dir, name, out);
  }

  private readF32(name: string, shape: number[]): Tensor {
    const t = Tensor.zeros(shape);
    this.readInto(name, t);
    return t;
  }

  /** Fills `into` with block i's parameters in f32 (dequantized linears for a quantized checkpoint). */
  loadBlock(i: number, into: BlockParams): void {
    loadBlockParams(this.st, this.dir, this.quant, i, into);
  }

  embedding(): Tensor {
    return this.readF32('model.embed_tokens.weight', [this.cfg.vocabSize, this.cfg.hiddenSize]);
  }

  finalNorm(): Tensor {
    return this.readF32('model.norm.weight', [this.cfg.hiddenSize]);
  }

  /** lm_head (V, C); the embedding table when the model ties them. */
  lmHead(embedding?: Tensor): Tensor {
    if (this.cfg.tieWordEmbeddings || !this.st.has('lm_head.weight')) {
      if (!this.cfg.tieWordEmbeddings) throw new Error(`${this.dir}: missing tensor lm_head.weight`);
      return embedding ?? this.embedding();
    }
    return this.readF32('lm_head.weight', [this.cfg.vocabSize, this.cfg.hiddenSize]);
  }

  /**
   * Checks, from the file headers alone, every tensor a run reads: present, of the shape
   * config.json implies and of a dtype eqat reads (F32/F16/BF16 for floats; I32 qweight, qzeros
   * and g_idx with F16/BF16/F32 scales for a quantized linear). Throws a CheckpointError naming
   * the file and the tensor. Cheap: call it before anything heavy.
   */
  checkTensors(): void {
    for (const t of expectedTensors(this.cfg, this.quant)) {
      if (!this.st.has(t.name)) {
        if (t.optional) continue;
        throw new CheckpointError(
          this.dir,
          `missing tensor ${t.name} (${t.role}); the checkpoint is incomplete: download or write it again`,
        );
      }
      const info = this.st.info(t.name);
      if (!t.dtypes.includes(info.dtype)) {
        throw new CheckpointError(
          info.file,
          `tensor ${t.name} has dtype ${info.dtype}, which eqat does not read here (expected ${t.dtypes.join(', ')}); convert the checkpoint (e.g. save it in bfloat16)`,
        );
      }
      if (info.shape.length !== t.shape.length || info.shape.some((d, k) => d !== t.shape[k])) {
        throw new CheckpointError(
          info.file,
          `tensor ${t.name} has shape [${info.shape.join(', ')}], but ${join(this.dir, 'config.json')} implies [${t.shape.join(', ')}]; the weights and the config do not belong together`,
        );
      }
    }
  }

  /**
   * Reads every block once, which checks each of its tensors for NaN/Inf (readInto does): a run
   * that writes block by block calls it so that a damaged last block stops it before the first
   * block is trained or written.
   */
  checkFiniteBlocks(): void {
    const scratch = allocBlockParams(this.cfg).params;
    for (let i = 0; i < this.cfg.numLayers; i++) this.loadBlock(i, scratch);
  }

  /** Raw access for checkpoint writers (copying embeddings/norms unchanged). */
  get safetensors(): SafetensorsModel {
    return this.st;
  }
}

const FLOAT_DTYPES: readonly SafeDtype[] = ['F32', 'F16', 'BF16'];

/** One tensor a model of this config is read from; `optional` ones are checked only when present. */
interface ExpectedTensor {
  name: string;
  shape: number[];
  dtypes: readonly SafeDtype[];
  /** What reads it, for messages. */
  role: string;
  optional?: boolean;
}

/** Every tensor WeightSource reads for this config: the head, then block by block. */
function expectedTensors(cfg: ModelConfig, quant: QuantConfig | null): ExpectedTensor[] {
  const V = cfg.vocabSize;
  const C = cfg.hiddenSize;
  const out: ExpectedTensor[] = [
    { name: 'model.embed_tokens.weight', shape: [V, C], dtypes: FLOAT_DTYPES, role: 'the embedding' },
    { name: 'model.norm.weight', shape: [C], dtypes: FLOAT_DTYPES, role: 'the final norm' },
  ];
  if (!cfg.tieWordEmbeddings) out.push({ name: 'lm_head.weight', shape: [V, C], dtypes: FLOAT_DTYPES, role: 'lm_head (tie_word_embeddings is false)' });
  const shapes = blockParamShapes(cfg);
  for (let i = 0; i < cfg.numLayers; i++) {
    const role = `block ${i + 1} of ${cfg.numLayers}`; // 1-based, beside the 0-based tensor name
    const prefix = `model.layers.${i}.`;
    for (const key of BLOCK_PARAM_NAMES) {
      const shape = shapes[key];
      if (!shape) continue;
      const linear = BLOCK_LINEARS.find(([k]) => k === key);
      if (quant && linear) {
        const [O, I] = shape as [number, number];
        const { bits: b, groupSize: G } = quant;
        const base = prefix + linear[1];
        out.push(
          { name: base + '.qweight', shape: [(I * b) / 32, O], dtypes: ['I32'], role },
          { name: base + '.qzeros', shape: [I / G, (O * b) / 32], dtypes: ['I32'], role },
          { name: base + '.scales', shape: [I / G, O], dtypes: FLOAT_DTYPES, role },
          { name: base + '.g_idx', shape: [I], dtypes: ['I32'], role, optional: true },
        );
      } else {
        out.push({ name: prefix + HF_PARAM_NAME[key], shape, dtypes: FLOAT_DTYPES, role });
      }
    }
  }
  return out;
}

/**
 * Throws a CheckpointError naming `file` and tensor `name` when `t` (f32, f16 or bf16) holds a
 * NaN or an infinity: such a checkpoint gives NaN perplexities and losses, never a useful run.
 */
export function checkFinite(file: string, name: string, t: Tensor): void {
  let at = -1;
  if (t.dtype === 'f32') {
    at = firstNonFinite(t);
    if (at < 0) return;
  } else if (t.dtype === 'f16' || t.dtype === 'bf16') {
    const exp = t.dtype === 'f16' ? 0x7c00 : 0x7f80; // all exponent bits set: inf or NaN
    const bits = t.data as Uint16Array;
    for (let k = 0; k < bits.length; k++) {
      if ((bits[k]! & exp) === exp) {
        at = k;
        break;
      }
    }
    if (at < 0) return;
  } else {
    return;
  }
  const value = t.dtype === 'f32' ? t.f32[at]! : toF32(t.dtype, (t.data as Uint16Array).subarray(at, at + 1))[0]!;
  throw new CheckpointError(
    file,
    `tensor ${name} holds ${value} at element ${at} (shape [${t.shape.join(', ')}]); the weights are damaged: download or write the checkpoint again`,
  );
}

/** What block loading needs from a safetensors file or directory. */
export interface TensorReader {
  has(name: string): boolean;
  info(name: string): { shape: number[]; file: string };
  readTensor(name: string): Tensor;
  readF32(name: string, out?: Float32Array): Float32Array;
}

/** Reads tensor `name` into `out` (f32), checking its shape against what the config implies. */
export function readInto(st: TensorReader, where: string, name: string, out: Tensor): void {
  const info = st.info(name);
  if (info.shape.length !== out.shape.length || info.shape.some((d, i) => d !== out.shape[i])) {
    throw new Error(`${where}: tensor ${name} has shape [${info.shape.join(', ')}], the config implies [${out.shape.join(', ')}]`);
  }
  st.readF32(name, out.f32);
  checkFinite(info.file, name, out);
}

/** Integer weights q (O, I), scales and zero points (O, I/G) of one GPTQ-layout linear. */
export function readQuantLinear(
  st: TensorReader,
  quant: QuantConfig,
  module: string,
  O: number,
  I: number,
): { q: Uint8Array; scale: Float32Array; zero: Float32Array } {
  const G = quant.groupSize;
  const groups = I / G;
  const q = unpackQweight(st.readTensor(module + '.qweight').i32, O, I, quant.bits);
  const zT = unpackQzeros(st.readTensor(module + '.qzeros').i32, O, groups, quant.bits); // (O, groups)
  const scales = st.readTensor(module + '.scales'); // (groups, O)
  checkFinite(st.info(module + '.scales').file, module + '.scales', scales);
  const sT = scales.dtype === 'f16' || scales.dtype === 'bf16' ? toF32(scales.dtype, scales.data as Uint16Array) : scales.f32;
  const scale = new Float32Array(O * groups);
  const zero = new Float32Array(O * groups);
  const v1 = quant.checkpointFormat === 'gptq' ? 1 : 0; // v1 stores z − 1
  for (let o = 0; o < O; o++) {
    for (let g = 0; g < groups; g++) {
      scale[o * groups + g] = sT[g * O + o]!;
      zero[o * groups + g] = zT[o * groups + g]! + v1;
    }
  }
  return { q, scale, zero };
}

/** Fills `into` with block i's parameters in f32; quantized linears are dequantized as (q − z)·s. */
export function loadBlockParams(st: TensorReader, where: string, quant: QuantConfig | null, i: number, into: BlockParams): void {
  const prefix = `model.layers.${i}.`;
  for (const key of BLOCK_PARAM_NAMES) {
    const t = into[key];
    if (!t) continue;
    const linear = BLOCK_LINEARS.find(([k]) => k === key);
    if (quant && linear) {
      const [O, I] = t.shape as [number, number];
      const { q, scale, zero } = readQuantLinear(st, quant, prefix + linear[1], O, I);
      dequantize(q, scale, zero, O, I, quant.bits, quant.groupSize, t.f32);
    } else {
      readInto(st, where, prefix + HF_PARAM_NAME[key], t);
    }
  }
}
