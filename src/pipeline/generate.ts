// Greedy (or sampled) generation (`eqat generate`): the model held on the device (in memory on
// the CPU, uploaded once on CUDA, packed when quantized) and decoded over a key/value cache
// per block (KvDecoder, src/model/model.ts): the prompt once, then one token per step.
import { KvDecoder, Model } from '../model/model.js';
import { checkPositions, type ModelConfig } from '../model/config.js';
import type { WeightSource } from '../model/weights.js';
import type { Backend, Precision } from '../backend/backend.js';
import { cpuBackend } from '../backend/cpu.js';
import { cudaBackend } from '../backend/cuda.js';
import { Rng } from '../engine/random.js';

/** The defaults of `eqat generate` (--max-new-tokens, --temperature, --seed) and of the library's generate. */
export const GENERATE_DEFAULTS = { maxNewTokens: 32, temperature: 0, seed: 0 } as const;

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy. */
  temperature?: number;
  seed?: number;
  /** Stop at an end-of-sequence token. */
  stopAtEos?: boolean;
}

/** What generation needs of a model: the logits (V) of the token after a prefix of ids. */
export interface NextTokenModel {
  readonly cfg: ModelConfig;
  nextTokenLogits(ids: Int32Array): Float32Array;
}

/** Returns prompt ids followed by the generated ids. */
export function generateIds(model: NextTokenModel, promptIds: number[], opts: GenerateOptions): number[] {
  checkPrompt(promptIds);
  const ids = [...promptIds];
  const V = model.cfg.vocabSize;
  const rng = new Rng(opts.seed ?? 0);
  const temperature = opts.temperature ?? 0;
  for (let step = 0; step < opts.maxNewTokens; step++) {
    const logits = model.nextTokenLogits(Int32Array.from(ids));
    let next = 0;
    if (temperature <= 0) {
      for (let v = 1; v < V; v++) if (logits[v]! > logits[next]!) next = v;
    } else {
      let max = -Infinity;
      for (let v = 0; v < V; v++) max = Math.max(max, logits[v]!);
      let sum = 0;
      const p = new Float64Array(V);
      for (let v = 0; v < V; v++) sum += p[v] = Math.exp((logits[v]! - max) / temperature);
      let r = rng.next() * sum;
      for (next = 0; next < V - 1; next++) if ((r -= p[next]!) <= 0) break;
    }
    ids.push(next);
    if (opts.stopAtEos && model.cfg.eosTokenIds.includes(next)) break;
  }
  return ids;
}

/** generateIds over a key/value cache of prompt + maxNewTokens positions on a resident model (freed before returning). */
export function generateIdsCached<A>(model: Model<A>, promptIds: number[], opts: GenerateOptions): number[] {
  checkPrompt(promptIds);
  const decoder = new KvDecoder(model, promptIds.length + opts.maxNewTokens);
  try {
    return generateIds(decoder, promptIds, opts);
  } finally {
    decoder.free();
  }
}

/**
 * generateIdsCached on the model of `src` (its tensors checked, prompt + maxNewTokens within its
 * positions) built for decoding on `device` (use 'decode':
 * buffers for the prompt, the longest step, and one row of logits), GEMM inputs in `precision`
 * (default bf16 on CUDA, f32 on the CPU), everything freed before returning.
 */
export function generateFromSource(
  src: WeightSource,
  promptIds: number[],
  opts: GenerateOptions,
  { device = 'cpu', precision }: { device?: 'cpu' | 'cuda'; precision?: Precision } = {},
): number[] {
  checkPrompt(promptIds);
  src.checkTensors();
  checkPositions(src.cfg, promptIds.length + opts.maxNewTokens, `the prompt (${promptIds.length} tokens) + --max-new-tokens ${opts.maxNewTokens}`, src.dir);
  return device === 'cuda' ? generateOn(cudaBackend, src, promptIds, opts, precision ?? 'bf16') : generateOn(cpuBackend, src, promptIds, opts, precision ?? 'f32');
}

function generateOn<A>(be: Backend<A>, src: WeightSource, promptIds: number[], opts: GenerateOptions, precision: Precision): number[] {
  const model = new Model(be, src, { B: 1, T: promptIds.length, precision, use: 'decode' });
  try {
    return generateIdsCached(model, promptIds, opts);
  } finally {
    model.free();
  }
}

function checkPrompt(promptIds: number[]): void {
  if (promptIds.length === 0) throw new Error('generate: empty prompt (and the tokenizer has no bos token)');
}
