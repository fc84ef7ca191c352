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
