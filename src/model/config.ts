// The architecture description every part of eqat works from, parsed from a Hugging Face
// config.json by src/io/hf-config.ts. One type for the Llama family: llama, mistral, qwen2, qwen3.
//
// Letters used across the code base: B batch, T tokens, C hidden size (channels), H query
// heads, Hkv key/value heads, D head dim, F ffn (intermediate) size, V vocab, G group size,
// b bits.

export type ModelType = 'llama' | 'mistral' | 'qwen2' | 'qwen3';

/** RoPE frequency scaling, as in transformers' rope_parameters / rope_scaling. */
export type RopeScaling =
  | { type: 'default' }
  | { type: 'linear'; factor: number }
  | {
      type: 'llama3';
      factor: number;
      lowFreqFactor: number;
      highFreqFactor: number;
      originalMaxPositionEmbeddings: number;
    };

export interface ModelConfig {
  modelType: ModelType;
  vocabSize: number; // V
  hiddenSize: number; // C
  intermediateSize: number; // F
  numLayers: number;
  numHeads: number; // H
  numKvHeads: number; // Hkv (divides H)
  headDim: number; // D
  rmsNormEps: number;
  ropeTheta: number;
  ropeScaling: RopeScaling;
  maxPositionEmbeddings: number;
  /** Biases on q/k/v projections (Qwen2; llama/mistral with attention_bias). */
  qkvBias: boolean;
  /** Bias on o_proj (llama attention_bias=true). */
  oBias: boolean;
  /** Biases on gate/up/down (llama mlp_bias=true). */
  mlpBias: boolean;
  /** Per-head RMSNorm on q and k before RoPE (Qwen3). */
  qkNorm: boolean;
  tieWordEmbeddings: boolean;
  /** Sliding-window attention size, or null for full causal attention. */
  slidingWindow: number | null;
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** The dtype the checkpoint is stored in (torch_dtype / dtype). */
  storageDtype: 'f32' | 'f16' | 'bf16';
}

/** Names of the linear layers of one decoder block, in HF naming. */
export const LINEAR_NAMES = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LinearName = (typeof LINEAR_NAMES)[number];

/** (out_features, in_features) of each linear layer of a block. */
export function linearShape(cfg: ModelConfig, name: LinearName): [number, number] {
  const C = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKvHeads * cfg.headDim;
  switch (name) {
    case 'q_proj':
      return [qDim, C];
    case 'k_proj':
    case 'v_proj':
      return [kvDim, C];
    case 'o_proj':
      return [C, qDim];
    case 'gate_proj':
    case 'up_proj':
      return [cfg.intermediateSize, C];
    case 'down_proj':
      return [C, cfg.intermediateSize];
  }
}

/** HF parameter path prefix of linear `name` in block `i`. */
export function linearPath(i: number, name: LinearName): string {
  const group = name === 'gate_proj' || name === 'up_proj' || name === 'down_proj' ? 'mlp' : 'self_attn';
  return `model.layers.${i}.${group}.${name}`;
}

/**
 * The longest sequence the model's positions cover: max_position_embeddings, and for linear
 * RoPE scaling (factor k: positions are divided by k) k times that, which the model reaches only
 * if it was trained with the scaling. llama3 scaling already states the extended length as
 * max_position_embeddings: Llama 3.1 and 3.2 ship max_position_embeddings 131072 with
 * original_max_position_embeddings 8192 and factor 8 (3.1) or 32 (3.2), and Hugging Face takes
 * max_position_embeddings as their context. The factor shapes the frequencies over that length
 * and multiplies nothing (8192 × 8 is half Llama 3.1's context, 8192 × 32 twice Llama 3.2's),
 * so beyond max_position_embeddings is refused, with no band of warnings as for linear scaling.
 */
export function positionLimit(cfg: ModelConfig): { trained: number; scaled: number } {
  const trained = cfg.maxPositionEmbeddings;
  const scaled = cfg.ropeScaling.type === 'linear' ? Math.floor(trained * cfg.ropeScaling.factor) : trained;
  return { trained, scaled };
}

/**
 * Checks that `tokens` positions (`what`, e.g. "--seqlen 4096") fit the model in `modelDir`:
 * beyond what RoPE scaling reaches is refused (the output would be garbage, silently); beyond
 * max_position_embeddings but within linear RoPE scaling is a warning on stderr.
 */
export function checkPositions(cfg: ModelConfig, tokens: number, what: string, modelDir: string): void {
  const { trained, scaled } = positionLimit(cfg);
  if (tokens <= trained) return;
  const limit = `${modelDir} has max_position_embeddings ${trained}`;
  if (tokens > scaled) {
    const rope = cfg.ropeScaling;
    const scaling =
      scaled > trained ? ` (${scaled} with its linear RoPE scaling)`
      : rope.type === 'llama3' ? ` (with its llama3 RoPE scaling: factor ${rope.factor} does not extend it)`
      : '';
    throw new Error(`${what}: needs ${tokens} positions, but ${limit}${scaling}; use at most ${scaled}`);
  }
  process.stderr.write(`warning: ${what}: ${tokens} positions exceed max_position_embeddings ${trained} of ${modelDir}, within the ${scaled} its linear RoPE scaling reaches\n`);
}
