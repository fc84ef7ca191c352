// A quantized model held packed: per block, the integer weights of every linear stay in the
// GPTQ layout (PackedWeight) and only the f32 step sizes are unpacked (they are what E2E-QP
// trains). Norms, biases, embeddings and lm_head are f32. No dequantized copy of the model
// ever exists; linears dequantize tile by tile inside the packed-linear kernels (their
// LinearImpl: src/model/packed-linears.ts).
import { Tensor } from '../engine/tensor.js';
import type { ModelConfig } from './config.js';
import {
  BLOCK_LINEARS,
  BLOCK_PARAM_NAMES,
  HF_PARAM_NAME,
  blockParamShapes,
  isBlockLinear,
  type BlockLinear,
  type BlockParams,
} from './block.js';
import { readInto, readQuantLinear, WeightSource } from './weights.js';
import type { QuantConfig } from '../quant/checkpoint-config.js';
import { packWeight, type PackedWeight } from '../quant/packed-linear.js';
import { zerosToInt } from '../quant/primitives.js';

export interface PackedBlock {
  /** Norms and biases (f32); the linear entries are empty placeholders. */
  params: BlockParams;
  weights: Record<BlockLinear, PackedWeight>;
  /** Step sizes (O, I/G), f32. */
  scales: Record<BlockLinear, Tensor>;
}

/** Reads block i of a quantized checkpoint into its packed form. */
export function loadPackedBlock(src: WeightSource, i: number): PackedBlock {
  const cfg = src.cfg;
  const quant = src.quant;
  if (!quant) throw new Error(`${src.dir}: not a quantized checkpoint (no quantization_config in config.json)`);
  const shapes = blockParamShapes(cfg);
  const params: Partial<Record<string, Tensor>> = {};
  const weights = {} as Record<BlockLinear, PackedWeight>;
  const scales = {} as Record<BlockLinear, Tensor>;
  const prefix = `model.layers.${i}.`;
  for (const name of BLOCK_PARAM_NAMES) {
    const shape = shapes[name];
    if (!shape) continue;
    if (isBlockLinear(name)) {
      params[name] = Tensor.zeros([0]);
      continue;
    }
    const t = Tensor.zeros(shape);
    readInto(src.safetensors, src.dir, prefix + HF_PARAM_NAME[name], t);
    params[name] = t;
  }
  for (const [key, module] of BLOCK_LINEARS) {
    const [O, I] = shapes[key] as [number, number];
    const { q, scale, zero } = readQuantLinear(src.safetensors, quant, prefix + module, O, I);
    weights[key] = packWeight(q, zerosToInt(zero, quant.bits), O, I, quant.bits, quant.groupSize);
    scales[key] = Tensor.fromF32(scale, [O, I / quant.groupSize]);
  }
  return { params: params as BlockParams, weights, scales };
}

export class PackedModel {
  private constructor(
    readonly cfg: ModelConfig,
    readonly quant: QuantConfig,
    readonly embedding: Tensor, // (V, C)
    readonly blocks: PackedBlock[],
    readonly finalNorm: Tensor, // (C)
    readonly lmHead: Tensor, // (V, C)
  ) {}

  /** A packed model from its parts (e.g. random weights of a given shape for benchmarks). */
  static fromParts(
    cfg: ModelConfig,
    quant: QuantConfig,
    embedding: Tensor,
    blocks: PackedBlock[],
    finalNorm: Tensor,
    lmHead: Tensor,
  ): PackedModel {
    return new PackedModel(cfg, quant, embedding, blocks, finalNorm, lmHead);
  }

  static load(src: WeightSource): PackedModel {
    if (!src.quant) throw new Error(`${src.dir}: not a quantized checkpoint (no quantization_config in config.json)`);
    const blocks: PackedBlock[] = [];
    for (let i = 0; i < src.cfg.numLayers; i++) blocks.push(loadPackedBlock(src, i));
    const embedding = src.embedding();
    return new PackedModel(src.cfg, src.quant, embedding, blocks, src.finalNorm(), src.lmHead(embedding));
  }

  /** Bytes held by the packed integer weights, zero points and f32 scales of all blocks. */
  packedBytes(): number {
    let n = 0;
    for (const b of this.blocks) {
      for (const [key] of BLOCK_LINEARS) n += b.weights[key].qweight.byteLength + b.weights[key].zeros.byteLength + b.scales[key].f32.byteLength;
    }
    return n;
  }
}
