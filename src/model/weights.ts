// Where a model's weights come from: a Hugging Face checkpoint directory, either full
// precision (f32/f16/bf16 safetensors) or an eqat/GPTQ quantized one (qweight/qzeros/scales
// in the GPTQ v2 layout, dequantized here exactly as (q − z)·s in f32).
//
// Weights are read one block at a time (lazy safetensors), so a model larger than RAM can be
// walked block by block.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tensor } from '../engine/tensor.js';
import { toF32 } from '../engine/dtype.js';
import { SafetensorsModel } from '../io/safetensors.js';
import { loadConfig } from '../io/hf-config.js';
import type { ModelConfig } from './config.js';
import { BLOCK_LINEARS, BLOCK_PARAM_NAMES, HF_PARAM_NAME, type BlockParams } from './block.js';
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

  /** Raw access for checkpoint writers (copying embeddings/norms unchanged). */
  get safetensors(): SafetensorsModel {
    return this.st;
  }
}

/** What block loading needs from a safetensors file or directory. */
export interface TensorReader {
  has(name: string): boolean;
  info(name: string): { shape: number[] };
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
