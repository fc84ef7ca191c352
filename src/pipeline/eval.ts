// Perplexity evaluation (`eqat eval`): the whole text tokenized without special tokens, cut
// into non-overlapping windows of seqlen tokens (remainder dropped), mean next-token NLL over
// all windows (seqlen − 1 predictions per window), exp. One Model (src/model/model.ts) on
// either backend: on the CPU it is streamed, one block at a time over all windows, so only one
// block's weights are in memory; on CUDA it is resident (packed when quantized) and windows run
// through it in batches.
import { readFileSync } from 'node:fs';
import { extname } from 'node:path';
import { BF16_NEEDS_CUDA } from '../engine/cuda.js';
import { WeightSource } from '../model/weights.js';
import { Model, type Residency } from '../model/model.js';
import type { Backend, Precision } from '../backend/backend.js';
import { cpuBackend } from '../backend/cpu.js';
import { cudaBackend } from '../backend/cuda.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import { resolveModel } from '../io/hub.js';
import { isDatasetName, namedEvalWindows, type NamedDataOptions } from '../data/named-datasets.js';
import { evalWindows } from '../data/windows.js';
import { checkText, readDocuments } from '../data/documents.js';
import { checkInputPath } from '../io/errors.js';
import { checkPositions } from '../model/config.js';
import { reporter } from '../cli/progress.js';
import type { OnEvent } from './events.js';

/** The defaults of `eqat eval` (its --seqlen and --batch) and of the library's evaluate. */
export const EVAL_DEFAULTS = { seqlen: 2048, batch: 4 } as const;

export interface EvalOptions {
  seqlen: number;
  /** Windows per forward step. */
  batch?: number;
  /** Evaluate at most this many windows (all when undefined). */
  maxWindows?: number;
  /** No progress bar on stderr. */
  quiet?: boolean;
  /** Called with the progress events of the evaluation (src/pipeline/events.ts). */
  onEvent?: OnEvent;
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
  checkInputPath('--data', path, 'file', 'a .txt, .jsonl or .parquet file');
  if (extname(path).toLowerCase() !== '.txt') return (await readDocuments(path)).join('\n\n');
  const text = readFileSync(path, 'utf8');
  checkText(path, text);
  return text;
}

/**
 * The perplexity windows of --data: a dataset name (wikitext2, c4: the official protocol of each,
 * src/data/named-datasets.ts) unless a local file of that name exists, else the file's text
 * (readEvalText) tokenized without special tokens and cut into consecutive windows.
 */
export async function perplexityWindows(
  data: string,
  tok: Tokenizer,
  tokenizerDir: string,
  seqlen: number,
  opts: NamedDataOptions = {},
): Promise<{ windows: Int32Array; count: number }> {
  if (isDatasetName(data)) return namedEvalWindows(data, tok, tokenizerDir, seqlen, { flag: '--data', ...opts });
  return evalWindows(await readEvalText(data), tok, seqlen);
}

/** How and where windowsNll runs. */
export interface WindowsNllOptions {
  /** Windows per forward step (default 4). */
  batch?: number;
  quiet?: boolean;
  /** Called with every eval-step event. */
  onEvent?: OnEvent;
  /** Default cpu. */
  device?: 'cpu' | 'cuda';
  /** GEMM input precision: f32 on the CPU, default bf16 on CUDA. */
  precision?: Precision;
  /** Default: streamed on the CPU (one block's weights in memory), resident on CUDA. */
  residency?: Residency;
}

/**
 * Mean NLL over windows (count, T) of token ids: the per-token losses summed window by window,
 * token by token, in order, on either device.
 */
export function windowsNll(src: WeightSource, ids: Int32Array, count: number, T: number, opts: WindowsNllOptions = {}): { nll: number; predictions: number } {
  return opts.device === 'cuda' ? windowsNllOn(cudaBackend, src, ids, count, T, opts) : windowsNllOn(cpuBackend, src, ids, count, T, opts);
}

function windowsNllOn<A>(
  be: Backend<A>,
  src: WeightSource,
  ids: Int32Array,
  count: number,
  T: number,
  { batch = 4, quiet = false, onEvent, precision = be.name === 'cuda' ? 'bf16' : 'f32', residency = be.name === 'cuda' ? 'resident' : 'streamed' }: WindowsNllOptions,
): { nll: number; predictions: number } {
  const model = new Model(be, src, { residency, precision, B: Math.min(batch, count), T });
  try {
    const emit = reporter({ quiet, onEvent });
    const of = model.evalSteps(count);
    let total = 0;
    model.windowLosses(ids, count, (_, losses) => {
      for (let t = 0; t < T - 1; t++) total += losses[t]!;
    }, (done) => emit({ type: 'eval-step', done, of }));
    const predictions = count * (T - 1);
    return { nll: total / predictions, predictions };
  } finally {
    model.free();
  }
}

export async function evaluatePerplexity(modelDir: string, dataFile: string, opts: EvalOptions): Promise<EvalResult> {
  const t0 = performance.now();
  if (opts.precision === 'bf16' && opts.device !== 'cuda') throw new Error(`--precision: ${BF16_NEEDS_CUDA}`);
  modelDir = await resolveModel(modelDir, { flag: '--model', quiet: opts.quiet });
  checkInputPath('--model', modelDir, 'directory', 'a model directory');
  const src = WeightSource.open(modelDir);
  try {
    src.checkTensors();
    checkPositions(src.cfg, opts.seqlen, `--seqlen ${opts.seqlen}`, modelDir);
    const tok = loadTokenizer(modelDir);
    const { windows, count: all } = await perplexityWindows(dataFile, tok, modelDir, opts.seqlen, { quiet: opts.quiet });
    const count = opts.maxWindows !== undefined ? Math.min(all, opts.maxWindows) : all;
    if (count === 0) {
      throw new Error(`${dataFile}: fewer than --seqlen ${opts.seqlen} tokens; nothing to evaluate`);
    }
    opts.onEvent?.({ type: 'phase', phase: 'eval', out: null, resumedFrom: 0, reused: false });
    const { nll, predictions } = windowsNll(src, windows, count, opts.seqlen, opts);
    if (!Number.isFinite(nll)) {
      throw new Error(`${modelDir}: the mean NLL is ${nll} although every weight is finite: the forward overflowed; try --precision f32 or another --seqlen`);
    }
    const seconds = (performance.now() - t0) / 1000;
    opts.onEvent?.({ type: 'done', phase: 'eval', out: null, seconds });
    return { ppl: Math.exp(nll), nll, tokens: count * opts.seqlen, predictions, windows: count, seqlen: opts.seqlen, seconds };
  } finally {
    src.close();
  }
}
