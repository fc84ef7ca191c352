// Perplexity evaluation (`eqat eval`): the whole text tokenized without special tokens, cut
// into non-overlapping windows of seqlen tokens (remainder dropped), mean next-token NLL over
// all windows (seqlen − 1 predictions per window), exp. On the CPU the model is walked one
// block at a time over all windows, so only one block's weights are in memory; on CUDA the
// model is uploaded once (packed when quantized) and windows run through it in batches
// (src/model/model-cuda.ts).
import { readFileSync, existsSync } from 'node:fs';
import { extname } from 'node:path';
import { Tensor } from '../engine/tensor.js';
import { BF16_NEEDS_CUDA } from '../engine/cuda.js';
import { WeightSource } from '../model/weights.js';
import { forwardLayerwise, headLogits } from '../model/model.js';
import { crossEntropyForward } from '../ops/crossentropy.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { evalWindows } from '../data/windows.js';
import { readDocuments } from '../data/documents.js';
import { progress } from '../cli/progress.js';
import { DeviceModel } from '../model/model-cuda.js';

export interface EvalOptions {
  seqlen: number;
  /** Windows per forward step. */
  batch?: number;
  /** Evaluate at most this many windows (all when undefined). */
  maxWindows?: number;
  quiet?: boolean;
  /** Where the forward runs (default cpu). */
  device?: 'cpu' | 'cuda';
  /** GEMM input precision on CUDA (default bf16); the CPU computes in f32. */
  precision?: 'f32' | 'bf16';
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

/** windowsNll on CUDA: the same windows, losses and summation order, the forward on the device. */
export function windowsNllCuda(
  src: WeightSource,
  ids: Int32Array,
  count: number,
  T: number,
  { batch = 4, quiet = false, precision = 'bf16' }: { batch?: number; quiet?: boolean; precision?: 'f32' | 'bf16' } = {},
): { nll: number; predictions: number } {
  const B = Math.min(batch, count);
  const model = new DeviceModel(src, B, T, precision);
  try {
    const bar = progress('eval', count, { quiet });
    let total = 0;
    for (let w0 = 0; w0 < count; w0 += B) {
      const n = Math.min(B, count - w0);
      const losses = model.windowLosses(ids.subarray(w0 * T, (w0 + n) * T), n);
      for (let w = 0; w < n; w++) for (let t = 0; t < T - 1; t++) total += losses[w * T + t]!;
      bar.update(w0 + n);
    }
    bar.stop();
    const predictions = count * (T - 1);
    return { nll: total / predictions, predictions };
  } finally {
    model.free();
  }
}

export async function evaluatePerplexity(modelDir: string, dataFile: string, opts: EvalOptions): Promise<EvalResult> {
  const t0 = performance.now();
  if (opts.precision === 'bf16' && opts.device !== 'cuda') throw new Error(`--precision: ${BF16_NEEDS_CUDA}`);
  const src = WeightSource.open(modelDir);
  try {
    const tok = loadTokenizer(modelDir);
    const text = await readEvalText(dataFile);
    const { windows, count: all } = evalWindows(text, tok, opts.seqlen);
    const count = opts.maxWindows !== undefined ? Math.min(all, opts.maxWindows) : all;
    if (count === 0) {
      throw new Error(`${dataFile}: fewer than --seqlen ${opts.seqlen} tokens; nothing to evaluate`);
    }
    const run = { batch: opts.batch ?? 4, quiet: opts.quiet ?? false };
    const { nll, predictions } =
      opts.device === 'cuda'
        ? windowsNllCuda(src, windows, count, opts.seqlen, { ...run, precision: opts.precision ?? 'bf16' })
        : windowsNll(src, windows, count, opts.seqlen, run);
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
