// Hugging Face config.json (+ generation_config.json) → eqat ModelConfig.
//
// Supports the Llama family as transformers builds it: llama, mistral, qwen2, qwen3. Defaults
// follow the transformers config classes, so a config that leaves a key out means what it
// means to transformers, with one deliberate exception: num_key_value_heads defaults to the
// number of attention heads for every family (transformers' mistral/qwen classes carry
// model-size defaults of 8 or 32 there, which no real checkpoint relies on).
//
// Architecture details that are implied by the family rather than stored in config.json:
//   llama    attention_bias → biases on q/k/v/o; mlp_bias → biases on gate/up/down.
//   mistral  no biases anywhere (transformers hard-codes bias=False); sliding_window applies to
//            every layer, defaults to 4096 when the key is absent, null disables it.
//   qwen2    q/k/v biases always, none on o or the MLP; sliding window only when
//            use_sliding_window is true, and then only on layers ≥ max_window_layers.
//   qwen3    attention_bias → biases on q/k/v/o; per-head RMSNorm on q and k; head_dim
//            defaults to 128; sliding window as qwen2.
// RoPE comes from rope_scaling (transformers 4) or rope_parameters (transformers 5), with
// rope_theta inside it or at the top level; default, linear and llama3 scaling are supported.
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import type { ModelConfig, ModelType, RopeScaling } from '../model/config.js';
import { CheckpointError, describeJson, isJsonObject } from './errors.js';

export const SUPPORTED_MODEL_TYPES: readonly ModelType[] = ['llama', 'mistral', 'qwen2', 'qwen3'];
export const SUPPORTED_ROPE_TYPES = ['default', 'linear', 'llama3'] as const;

/** transformers' per-family defaults for keys a config.json may omit. */
const FAMILY_DEFAULTS: Record<
  ModelType,
  { maxPositionEmbeddings: number; bosTokenId: number | null; eosTokenId: number | null; headDim: number | null }
> = {
  llama: { maxPositionEmbeddings: 2048, bosTokenId: 1, eosTokenId: 2, headDim: null },
  mistral: { maxPositionEmbeddings: 4096 * 32, bosTokenId: 1, eosTokenId: 2, headDim: null },
  qwen2: { maxPositionEmbeddings: 32768, bosTokenId: null, eosTokenId: null, headDim: null },
  qwen3: { maxPositionEmbeddings: 32768, bosTokenId: null, eosTokenId: null, headDim: 128 },
};

const DEFAULT_RMS_NORM_EPS = 1e-6;
const DEFAULT_ROPE_THETA = 10000;
const DEFAULT_SLIDING_WINDOW = 4096;
const DEFAULT_MAX_WINDOW_LAYERS = 28;

type Json = Record<string, unknown>;

/** Typed accessors over one JSON object; every error names the key and the file. */
class Fields {
  constructor(
    readonly obj: Json,
    readonly file: string,
    readonly prefix = '',
  ) {}

  private fail(key: string, problem: string): never {
    throw new CheckpointError(this.file, `'${this.prefix}${key}' ${problem}`);
  }

  /** Present and not null. */
  has(key: string): boolean {
    return this.obj[key] !== undefined && this.obj[key] !== null;
  }

  int(key: string, opts: { min?: number; fallback?: number } = {}): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (opts.fallback !== undefined) return opts.fallback;
      this.fail(key, 'is missing (required)');
    }
    if (typeof v !== 'number' || !Number.isSafeInteger(v)) this.fail(key, `must be an integer, got ${describeJson(v)}`);
    const min = opts.min ?? 1;
    if (v < min) this.fail(key, `must be at least ${min}, got ${v}`);
    return v;
  }

  num(key: string, opts: { positive?: boolean; fallback?: number } = {}): number {
    const v = this.obj[key];
    if (v === undefined || v === null) {
      if (opts.fallback !== undefined) return opts.fallback;
      this.fail(key, 'is missing (required)');
    }
    if (typeof v !== 'number' || !Number.isFinite(v)) this.fail(key, `must be a number, got ${describeJson(v)}`);
    if (opts.positive && !(v > 0)) this.fail(key, `must be positive, got ${v}`);
    return v;
  }

  bool(key: string, fallback: boolean): boolean {
    const v = this.obj[key];
    if (v === undefined || v === null) return fallback;
    if (typeof v !== 'boolean') this.fail(key, `must be true or false, got ${describeJson(v)}`);
    return v;
  }

  str(key: string): string | null {
    const v = this.obj[key];
    if (v === undefined || v === null) return null;
    if (typeof v !== 'string') this.fail(key, `must be a string, got ${describeJson(v)}`);
    return v;
  }

  /** A token id or list of token ids (null/absent → null). */
  ids(key: string): number[] | null {
    const v = this.obj[key];
    if (v === undefined || v === null) return null;
    const list = Array.isArray(v) ? v : [v];
    for (const x of list) {
      if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) {
        this.fail(key, `must be a token id or a list of token ids, got ${JSON.stringify(v)}`);
      }
    }
    return [...new Set(list as number[])];
  }
}

function parseRope(f: Fields, maxPositionEmbeddings: number): { ropeTheta: number; ropeScaling: RopeScaling } {
  const file = f.file;
  const nonEmpty = (v: unknown): boolean => v !== undefined && v !== null && !(isJsonObject(v) && Object.keys(v).length === 0);
  // transformers: rope_scaling (when set) takes precedence over rope_parameters.
  const key = nonEmpty(f.obj.rope_scaling) ? 'rope_scaling' : 'rope_parameters';
  const raw = f.obj[key];
  if (raw !== undefined && raw !== null && !isJsonObject(raw)) {
    throw new CheckpointError(file, `'${key}' must be an object, got ${describeJson(raw)}`);
  }
  const rp = new Fields((raw ?? {}) as Json, file, `${key}.`);
  if (['full_attention', 'sliding_attention'].some((k) => isJsonObject(rp.obj[k]))) {
    throw new CheckpointError(file, `'${key}' holds separate RoPE settings per layer type, which eqat does not support`);
  }

  const ropeTheta = rp.has('rope_theta') ? rp.num('rope_theta', { positive: true }) : f.num('rope_theta', { positive: true, fallback: DEFAULT_ROPE_THETA });

  for (const src of [rp, f]) {
    if (src.has('partial_rotary_factor') && src.num('partial_rotary_factor') !== 1) {
      throw new CheckpointError(file, `'${src.prefix}partial_rotary_factor' = ${String(src.obj.partial_rotary_factor)}: partial rotary embeddings are not supported`);
    }
  }

  const typeKey = rp.has('rope_type') ? 'rope_type' : 'type';
  const ropeType = rp.str(typeKey) ?? 'default';
  switch (ropeType) {
    case 'default':
      return { ropeTheta, ropeScaling: { type: 'default' } };
    case 'linear':
      return { ropeTheta, ropeScaling: { type: 'linear', factor: rp.num('factor', { positive: true }) } };
    case 'llama3': {
      const factor = rp.num('factor', { positive: true });
      const lowFreqFactor = rp.num('low_freq_factor', { positive: true });
      const highFreqFactor = rp.num('high_freq_factor', { positive: true });
      if (!(highFreqFactor > lowFreqFactor)) {
        throw new CheckpointError(file, `'${key}': high_freq_factor (${highFreqFactor}) must exceed low_freq_factor (${lowFreqFactor})`);
      }
      // transformers gives a top-level original_max_position_embeddings priority.
      const originalMaxPositionEmbeddings = f.has('original_max_position_embeddings')
        ? f.int('original_max_position_embeddings')
        : rp.int('original_max_position_embeddings', { fallback: maxPositionEmbeddings });
      return { ropeTheta, ropeScaling: { type: 'llama3', factor, lowFreqFactor, highFreqFactor, originalMaxPositionEmbeddings } };
    }
    default:
      throw new CheckpointError(
        file,
        `'${key}.${typeKey}' = '${ropeType}' is not supported (supported RoPE types: ${SUPPORTED_ROPE_TYPES.join(', ')})`,
      );
  }
}

/** Qwen2/Qwen3 sliding window: one size for all layers, or null; a per-layer mix is an error. */
function parseQwenSlidingWindow(f: Fields, numLayers: number): number | null {
  if (!f.bool('use_sliding_window', false)) return null;
  const window = f.int('sliding_window', { fallback: DEFAULT_SLIDING_WINDOW });
  let sliding: boolean[];
  const lt = f.obj.layer_types;
  if (lt !== undefined && lt !== null) {
    if (!Array.isArray(lt) || lt.length !== numLayers || !lt.every((t) => t === 'full_attention' || t === 'sliding_attention')) {
      throw new CheckpointError(
        f.file,
        `'layer_types' must list 'full_attention' or 'sliding_attention' for each of the ${numLayers} layers, got ${JSON.stringify(lt)}`,
      );
    }
    sliding = lt.map((t) => t === 'sliding_attention');
  } else {
    const from = f.int('max_window_layers', { min: 0, fallback: DEFAULT_MAX_WINDOW_LAYERS });
    sliding = Array.from({ length: numLayers }, (_, i) => i >= from);
  }
  if (sliding.every((s) => !s)) return null;
  if (sliding.every((s) => s)) return window;
  throw new CheckpointError(
    f.file,
    `sliding-window attention on some layers only (${sliding.filter((s) => s).length} of ${numLayers}) is not supported`,
  );
}

function parseStorageDtype(f: Fields): ModelConfig['storageDtype'] {
  const key = f.has('dtype') ? 'dtype' : 'torch_dtype';
  const v = f.str(key);
  if (v === null) return 'f32';
  switch (v.replace(/^torch\./, '')) {
    case 'float32':
      return 'f32';
    case 'float16':
      return 'f16';
    case 'bfloat16':
      return 'bf16';
    default:
      throw new CheckpointError(f.file, `'${key}' = '${v}' is not supported (supported: float32, float16, bfloat16)`);
  }
}

/**
 * Builds a ModelConfig from parsed config.json contents. `file` names the source in errors;
 * `generationConfig` (parsed generation_config.json) overrides bos/eos token ids it sets.
 */
export function parseConfig(json: unknown, file: string, generationConfig?: unknown): ModelConfig {
  if (!isJsonObject(json)) throw new CheckpointError(file, `expected a JSON object, got ${describeJson(json)}`);
  const f = new Fields(json, file);

  const mt = json.model_type;
  if (mt === undefined || mt === null) throw new CheckpointError(file, "'model_type' is missing (required)");
  if (typeof mt !== 'string') throw new CheckpointError(file, `'model_type' must be a string, got ${describeJson(mt)}`);
  if (!(SUPPORTED_MODEL_TYPES as readonly string[]).includes(mt)) {
    throw new CheckpointError(file, `model_type '${mt}' is not supported (supported: ${SUPPORTED_MODEL_TYPES.join(', ')})`);
  }
  const modelType = mt as ModelType;
  const defaults = FAMILY_DEFAULTS[modelType];

  const act = f.str('hidden_act');
  if (act !== null && act !== 'silu') throw new CheckpointError(file, `'hidden_act' = '${act}' is not supported (only silu)`);

  const vocabSize = f.int('vocab_size');
  const hiddenSize = f.int('hidden_size');
  const intermediateSize = f.int('intermediate_size');
  const numLayers = f.int('num_hidden_layers');
  const numHeads = f.int('num_attention_heads');
  const numKvHeads = f.int('num_key_value_heads', { fallback: numHeads });
  if (numHeads % numKvHeads !== 0) {
    throw new CheckpointError(file, `'num_attention_heads' (${numHeads}) must be a multiple of 'num_key_value_heads' (${numKvHeads})`);
  }
  let headDim: number;
  if (f.has('head_dim')) headDim = f.int('head_dim');
  else if (defaults.headDim !== null) headDim = defaults.headDim;
  else {
    if (hiddenSize % numHeads !== 0) {
      throw new CheckpointError(
        file,
        `'head_dim' is not set and 'hidden_size' (${hiddenSize}) is not a multiple of 'num_attention_heads' (${numHeads})`,
      );
    }
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) throw new CheckpointError(file, `head dimension ${headDim} must be even for rotary embeddings`);

  const rmsNormEps = f.num('rms_norm_eps', { positive: true, fallback: DEFAULT_RMS_NORM_EPS });
  const maxPositionEmbeddings = f.int('max_position_embeddings', { fallback: defaults.maxPositionEmbeddings });
  const { ropeTheta, ropeScaling } = parseRope(f, maxPositionEmbeddings);

  let qkvBias = false;
  let oBias = false;
  let mlpBias = false;
  let qkNorm = false;
  let slidingWindow: number | null = null;
  switch (modelType) {
    case 'llama':
      qkvBias = oBias = f.bool('attention_bias', false);
      mlpBias = f.bool('mlp_bias', false);
      break;
    case 'mistral':
      slidingWindow = json.sliding_window === undefined ? DEFAULT_SLIDING_WINDOW : f.has('sliding_window') ? f.int('sliding_window') : null;
      break;
    case 'qwen2':
      qkvBias = true;
      slidingWindow = parseQwenSlidingWindow(f, numLayers);
      break;
    case 'qwen3':
      qkvBias = oBias = f.bool('attention_bias', false);
      qkNorm = true;
      slidingWindow = parseQwenSlidingWindow(f, numLayers);
      break;
  }

  const tieWordEmbeddings = f.bool('tie_word_embeddings', false);

  if (Array.isArray(json.bos_token_id)) throw new CheckpointError(file, `'bos_token_id' must be a single token id, got ${JSON.stringify(json.bos_token_id)}`);
  let bosTokenId: number | null = f.has('bos_token_id') ? f.ids('bos_token_id')![0]! : defaults.bosTokenId;
  let eosTokenIds: number[] = f.has('eos_token_id') ? f.ids('eos_token_id')! : defaults.eosTokenId === null ? [] : [defaults.eosTokenId];

  if (generationConfig !== undefined && generationConfig !== null) {
    const gfile = join(dirname(file), 'generation_config.json');
    if (!isJsonObject(generationConfig)) throw new CheckpointError(gfile, `expected a JSON object, got ${describeJson(generationConfig)}`);
    const g = new Fields(generationConfig, gfile);
    if (Array.isArray(generationConfig.bos_token_id)) {
      throw new CheckpointError(gfile, `'bos_token_id' must be a single token id, got ${JSON.stringify(generationConfig.bos_token_id)}`);
    }
    if (g.has('bos_token_id')) bosTokenId = g.ids('bos_token_id')![0]!;
    if (g.has('eos_token_id')) eosTokenIds = g.ids('eos_token_id')!;
  }

  return {
    modelType,
    vocabSize,
    hiddenSize,
    intermediateSize,
    numLayers,
    numHeads,
    numKvHeads,
    headDim,
    rmsNormEps,
    ropeTheta,
    ropeScaling,
    maxPositionEmbeddings,
    qkvBias,
    oBias,
    mlpBias,
    qkNorm,
    tieWordEmbeddings,
    slidingWindow,
    bosTokenId,
    eosTokenIds,
    storageDtype: parseStorageDtype(f),
  };
}

/** Reads and parses a JSON file, naming the file in every error. */
export function readJsonFile(path: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new CheckpointError(path, `cannot read file (${(e as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(path, `not valid JSON (${(e as Error).message})`);
  }
}

/** Loads dir/config.json, applying dir/generation_config.json when present. */
export function loadConfig(dir: string): ModelConfig {
  if (!existsSync(dir)) throw new CheckpointError(dir, 'checkpoint directory does not exist');
  const file = join(dir, 'config.json');
  if (!existsSync(file)) throw new CheckpointError(dir, 'no config.json in this directory (a Hugging Face checkpoint needs one)');
  const json = readJsonFile(file);
  const genFile = join(dir, 'generation_config.json');
  const gen = existsSync(genFile) ? readJsonFile(genFile) : undefined;
  return parseConfig(json, file, gen);
}
