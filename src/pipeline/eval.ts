// Perplexity evaluation (`eqat eval`): the whole text tokenized without special tokens, cut
// into non-overlapping windows of seqlen tokens (remainder dropped), mean next-token NLL over
// all windows (seqlen − 1 predictions per window), exp. The model is walked one block at a
// time over all windows, so only one block's weights are in memory.
import { readFileSync, existsSync } from 'node:fs';
import { extname } from 'node:path';
import { Tensor } from '../engine/tensor.js';
import { WeightSource } from '../model/weights.js';
import { forwardLayerwise, headLogits } from '../model/model.js';
import { crossEntropyForward } from '../ops/crossentropy.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { evalWindows } from '../data/windows.js';
import { readDocuments } from '../data/documents.js';
import { progress } from '../cli/progress.js';

export interface EvalOptions {
  seqlen: number;
  /** Windows per forward step. */
  batch?: number;
  /** Evaluate at most this many windows (all when undefined). */
  maxWindows?: number;
  quiet?: boolean;
}

export interface EvalResult {
  ppl: number;
  /** Mean next-token negative log-likelihood (nats). */
  nll: number;
  /** Tokens evaluated (windows × seqlen). */
  tokens: number;
  /** Next-token predictions scored (windows × (seqlen − 1)). */
  predictions: number;
  windows: number;
  seqlen: number;
  seconds: number;
}

/** The evaluation text of a file: .txt verbatim; .jsonl/.parquet documents joined by blank lines. */
export async function readEvalText(path: string): Promise<string> {
  if (!existsSync(path)) throw new Error(`${path}: no such file`);
  if (extname(path).toLowerCase() === '.txt') return readFileSync(path, 'utf8');
  return (await readDocuments(path)).join('\n\n');
}

/** Mean NLL over windows (count, T) of token ids. */
export function windowsNll(
  src: WeightSource,
  ids: Int32Array,
  count: number,
  T: number,
  { batch = 4, quiet = false }: { batch?: number; quiet?: boolean } = {},
): { nll: number; predictions: number } {
  const cfg = src.cfg;
  const bar = progress('eval', cfg.numLayers * Math.ceil(count / batch) + count, { quiet });
  let steps = 0;
  const hidden = forwardLayerwise(src, ids, count, T, batch, (done) => bar.update((steps = done)));
  const finalNorm = src.finalNorm();
  const lmHead = src.lmHead();
  let total = 0;
  const losses = Tensor.zeros([T]);
  const targets = new Int32Array(T);
  for (let w = 0; w < count; w++) {
    const logits = headLogits(cfg, hidden.rows(w * T, T), finalNorm, lmHead);
    for (let t = 0; t < T - 1; t++) targets[t] = ids[w * T + t + 1]!;
    targets[T - 1] = -100;
    crossEntropyForward(losses, logits, Tensor.fromI32(targets));
    for (let t = 0; t < T - 1; t++) total += losses.f32[t]!;
    bar.update(steps + w + 1);
  }
  bar.stop();
  const predictions = count * (T - 1);
  return { nll: total / predictions, predictions };
}

export async function evaluatePerplexity(modelDir: string, dataFile: string, opts: EvalOptions): Promise<EvalResult> {
  const t0 = performance.now();
  const src = WeightSource.open(modelDir);
  try {
    const tok = loadTokenizer(modelDir);
    const text = await readEvalText(dataFile);
    const { windows, count: all } = evalWindows(text, tok, opts.seqlen);
    const count = opts.maxWindows !== undefined ? Math.min(all, opts.maxWindows) : all;
    if (count === 0) {
      throw new Error(`${dataFile}: fewer than --seqlen ${opts.seqlen} tokens; nothing to evaluate`);
    }
    const { nll, predictions } = windowsNll(src, windows, count, opts.seqlen, {
      batch: opts.batch ?? 4,
      quiet: opts.quiet ?? false,
    });
    return {
      ppl: Math.exp(nll),
      nll,
      tokens: count * opts.seqlen,
      predictions,
      windows: count,
      seqlen: opts.seqlen,
      seconds: (performance.now() - t0) / 1000,
    };
  } finally {
    src.close();
  }
}
