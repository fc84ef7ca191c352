// A tiny random-shaped config of the Llama family and the block variants the family has, for
// the block tests on every device; random block parameters for trainers compared side by side.
import type { ModelConfig } from '../../src/model/config.js';
import type { Rng } from '../../src/engine/random.js';
import { BLOCK_PARAM_NAMES, type BlockParams } from '../../src/model/block.js';

export function tinyConfig(over: Partial<ModelConfig>): ModelConfig {
  return {
    modelType: 'llama',
    vocabSize: 11,
    hiddenSize: 12,
    intermediateSize: 20,
    numLayers: 1,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 6,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: { type: 'default' },
    maxPositionEmbeddings: 64,
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    qkNorm: false,
    tieWordEmbeddings: false,
    slidingWindow: null,
    bosTokenId: 0,
    eosTokenIds: [1],
    storageDtype: 'f32',
    ...over,
  };
}

export const BLOCK_VARIANTS: [string, Partial<ModelConfig>][] = [
  ['llama (GQA)', {}],
  ['qwen2 (q/k/v biases)', { modelType: 'qwen2', qkvBias: true }],
  ['qwen3 (q/k norm)', { modelType: 'qwen3', qkNorm: true }],
  ['llama with o/mlp biases', { oBias: true, mlpBias: true, qkvBias: true }],
  ['mistral (sliding window 3)', { modelType: 'mistral', slidingWindow: 3 }],
];

/** Fills P with random block parameters (norms in [0.5, 1.5], the rest N(0, 0.3²)) and copies them into each of `copies`. */
export function randomBlockParams(rng: Rng, P: BlockParams, ...copies: BlockParams[]): void {
  for (const k of BLOCK_PARAM_NAMES) {
    const t = P[k];
    if (!t) continue;
    if (k.endsWith('Norm')) rng.fillUniform(t.f32, 0.5, 1.5);
    else rng.fillNormal(t.f32, 0.3);
    for (const c of copies) c[k]!.f32.set(t.f32);
  }
}
