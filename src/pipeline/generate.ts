// Greedy (or sampled) generation (`eqat generate`). The whole prefix is recomputed for each
// new token: simple and exact; fine for the short generations eqat uses to check models.
import { LoadedModel } from '../model/model.js';
import { Rng } from '../engine/random.js';

export interface GenerateOptions {
  maxNewTokens: number;
  /** 0 = greedy. */
  temperature?: number;
  seed?: number;
  /** Stop at an end-of-sequence token. */
  stopAtEos?: boolean;
}

/** Returns prompt ids followed by the generated ids. */
export function generateIds(model: LoadedModel, promptIds: number[], opts: GenerateOptions): number[] {
  const ids = [...promptIds];
  if (ids.length === 0) throw new Error('generate: empty prompt (and the tokenizer has no bos token)');
  const V = model.cfg.vocabSize;
  const rng = new Rng(opts.seed ?? 0);
  const temperature = opts.temperature ?? 0;
  for (let step = 0; step < opts.maxNewTokens; step++) {
    const T = ids.length;
    const logits = model.forward(Int32Array.from(ids), 1, T).f32.subarray((T - 1) * V, T * V);
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
