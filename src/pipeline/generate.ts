// Greedy (or sampled) generation (`eqat generate`). On the CPU the model is held in memory and
// decoded over a key/value cache (KvDecoder, src/model/model.ts): the prompt once, then one
// token per step. On CUDA it is uploaded once, packed when quantized, and decoded the same way
// over caches on the device (DeviceKvDecoder, src/model/model-cuda.ts).
import { DeviceKvDecoder, DeviceModel } from '../model/model-cuda.js';
import { KvDecoder, type LoadedModel } from '../model/model.js';
import type { ModelConfig } from '../model/config.js';
import type { WeightSource } from '../model/weights.js';
import { Rng } from '../engine/random.js';

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

/** generateIds on the CPU over a key/value cache of prompt + maxNewTokens positions. */
export function generateIdsCpu(model: LoadedModel, promptIds: number[], opts: GenerateOptions): number[] {
  checkPrompt(promptIds);
  return generateIds(new KvDecoder(model, promptIds.length + opts.maxNewTokens), promptIds, opts);
}

/**
 * generateIds on CUDA over key/value caches of prompt + maxNewTokens positions: the model of
 * `src` uploaded for decoding (DeviceModel use 'decode': buffers for the prompt, the longest
 * step, and one row of logits), GEMM inputs in `precision`, everything freed before returning.
 */
export function generateIdsCuda(src: WeightSource, promptIds: number[], opts: GenerateOptions, precision: 'f32' | 'bf16' = 'bf16'): number[] {
  checkPrompt(promptIds);
  const model = new DeviceModel(src, 1, promptIds.length, precision, 'decode');
  let decoder: DeviceKvDecoder | null = null;
  try {
    decoder = new DeviceKvDecoder(model, promptIds.length + opts.maxNewTokens);
    return generateIds(decoder, promptIds, opts);
  } finally {
    decoder?.free();
    model.free();
  }
}

function checkPrompt(promptIds: number[]): void {
  if (promptIds.length === 0) throw new Error('generate: empty prompt (and the tokenizer has no bos token)');
}
