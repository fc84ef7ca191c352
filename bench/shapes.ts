// Llama-family model shapes for the GPU benchmarks (random weights; nothing is downloaded):
// Llama-2-7B (hidden 4096, ffn 11008, 32 heads, no GQA), Llama-2-70B (hidden 8192, ffn 28672,
// 64 heads, 8 kv heads) and the project's llama-small.
import type { ModelConfig } from '../src/model/config.js';

const SHAPES = {
  '7b': { hiddenSize: 4096, intermediateSize: 11008, numHeads: 32, numKvHeads: 32, headDim: 128, numLayers: 32, vocabSize: 32000 },
  '70b': { hiddenSize: 8192, intermediateSize: 28672, numHeads: 64, numKvHeads: 8, headDim: 128, numLayers: 80, vocabSize: 32000 },
  small: { hiddenSize: 384, intermediateSize: 1024, numHeads: 6, numKvHeads: 2, headDim: 64, numLayers: 6, vocabSize: 4096 },
} as const;

export const SHAPE_NAMES = Object.keys(SHAPES) as (keyof typeof SHAPES)[];

/** The config of shape `name` (throws naming the choices for an unknown one). */
export function shapeConfig(name: string, what: string): ModelConfig {
  const shape = (SHAPES as Record<string, (typeof SHAPES)[keyof typeof SHAPES]>)[name];
  if (!shape) throw new Error(`${what}: --shape must be one of ${SHAPE_NAMES.join(', ')}, got ${name}`);
  return {
    modelType: 'llama',
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: { type: 'default' },
    maxPositionEmbeddings: 4096,
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    qkNorm: false,
    tieWordEmbeddings: false,
    slidingWindow: null,
    bosTokenId: 1,
    eosTokenIds: [2],
    storageDtype: 'f32',
    ...shape,
  };
}

/** Value of `--name` in argv, else the default. */
export function flagValue(argv: readonly string[], name: string, dflt: string): string {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1]! : dflt;
}
