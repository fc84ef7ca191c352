// Zero-shot multiple-choice evaluation (`eqat eval --tasks ...`), lm-evaluation-harness
// compatible: the tasks of src/data/mc-tasks.ts, scored as lm-eval's HFLM scores a causal model,
// with the paper's summary (mean acc over the tasks). docs/EVAL.md says what each choice
// follows in lm-eval.
//
// Requests → tokens (lm-eval's TemplateLM.loglikelihood and HFLM._encode_pair): no special
// tokens (lm-eval's add_bos_token defaults to false for causal models); trailing whitespace of
// the context moves to the front of the continuation; the continuation's tokens are those of
// encode(context + continuation) after the first len(encode(context)); an empty context is the
// bos token (eos without one). A sequence longer than the model's positions keeps its last
// tokens (lm-eval keeps max_length + 1 and drops the last one it does not need as input; none
// of the five tasks comes near).
//
// Scoring: the log-likelihood of a request is the sum over its continuation tokens of
// log p(token | everything before it), from the per-token cross-entropy of the one Model
// (src/model/model.ts, resident: every block on the backend, packed when quantized). Each
// distinct token sequence runs once: identical (context, continuation) pairs share a row, and
// a request whose sequence is a prefix of another request's of the same doc is read from that
// row (causal attention: its positions see the same tokens). Rows run longest first, `batch`
// per forward, right-padded to the longest of the batch (padding after a sequence cannot change
// its positions).
//
// Metrics per task (lm-eval ConfigurableTask.process_results, aggregation mean): acc = the
// argmax of the log-likelihoods is gold (the first maximum, as numpy.argmax); acc_norm = the
// argmax of log-likelihood / len(choice) in characters (Unicode code points, Python's len) is
// gold, for the tasks whose YAML lists it; stderr of a mean = sample standard deviation (n − 1)
// / sqrt(n) (lm_eval.api.metrics.mean_stderr), null below two docs. The average the paper
// reports is the mean acc over the tasks evaluated (EfficientQAT main_block_ap.py).
import { BF16_NEEDS_CUDA } from '../engine/cuda.js';
import { EVAL_DEFAULTS } from './eval.js';
import { WeightSource } from '../model/weights.js';
import { Model } from '../model/model.js';
import type { Backend, Precision } from '../backend/backend.js';
import { cpuBackend } from '../backend/cpu.js';
import { cudaBackend } from '../backend/cuda.js';
import { loadTokenizer, type Tokenizer } from '../io/tokenizer.js';
import { checkInputPath } from '../io/errors.js';
import { progress, type Progress } from '../cli/progress.js';
import { UsageError } from '../cli/args.js';
import { HUB_PARQUET_REVISION, loadTaskDocs, taskFileCandidates, taskFiles, type LoadedTask, type McDoc, type McTask } from '../data/mc-tasks.js';
import { existsSync } from 'node:fs';
import { hubDatasetFiles, parseHubName, resolveModel, type HubOptions } from '../io/hub.js';

export interface ZeroShotOptions {
  tasks: McTask[];
  /** Directory of the tasks' data files (src/data/mc-tasks.ts: taskFiles); default: the hub datasets through the Hugging Face cache. */
  taskData?: string;
  /** Where the hub is reached for hub model names and task data (default: the environment). */
  hub?: HubOptions;
  /** Evaluate the first `limit` docs of each task (all when undefined). */
  limit?: number;
  /** Sequences per forward (default EVAL_DEFAULTS.batch, as eval's --batch). */
  batch?: number;
  quiet?: boolean;
  device?: 'cpu' | 'cuda';
  /** GEMM input precision on CUDA (default bf16); the CPU computes in f32. */
  precision?: Precision;
  /** Return every doc's log-likelihoods and predictions (ZeroShotResult.details). */
  details?: boolean;
}

export interface ZeroShotTaskResult {
  task: string;
  split: string;
  /** Docs evaluated, and rows in the split. */
  docs: number;
  rows: number;
  acc: number;
  accStderr: number | null;
  /** null for a task whose lm-eval YAML does not list acc_norm (winogrande). */
  accNorm: number | null;
  accNormStderr: number | null;
  files: string[];
}

export interface ZeroShotDocDetail {
  task: string;
  /** Index of the doc in its split. */
  doc: number;
  /** Summed log-likelihood per choice (nats). */
  lls: number[];
  /** Continuation tokens per choice. */
  tokens: number[];
  gold: number;
  pred: number;
  predNorm: number;
}

export interface ZeroShotResult {
  tasks: ZeroShotTaskResult[];
  /** Mean acc over the tasks: the paper's average. */
  averageAcc: number;
  /** Requests scored, and distinct token sequences run through the model for them. */
  requests: number;
  sequences: number;
  /** Tokens forwarded, padding included. */
  tokens: number;
  seconds: number;
  details?: ZeroShotDocDetail[];
}

/** One request as tokens: the whole sequence (context + continuation, cut to the model's positions) and its continuation's length. */
export interface TokenRequest {
  ids: Int32Array;
  contLen: number;
}

/**
 * lm-eval's (context, continuation) → tokens: trailing whitespace of the context moved to the
 * continuation; continuation tokens = encode(context + continuation) after encode(context)'s
 * length; no special tokens; an empty context is `prefixId`. At most `maxTokens` tokens are
 * kept, the last ones.
 */
export function encodeRequest(tok: Tokenizer, context: string, continuation: string, prefixId: number, maxTokens: number, cache?: Map<string, number[]>): TokenRequest {
  const enc = (s: string): number[] => {
    let ids = cache?.get(s);
    if (!ids) {
      ids = tok.encode(s, { addSpecialTokens: false });
      cache?.set(s, ids);
    }
    return ids;
  };
  let ctx: number[];
  let cont: number[];
  if (context === '') {
    ctx = [prefixId];
    cont = enc(continuation);
  } else {
    const n = context.length - context.trimEnd().length;
    if (n > 0) {
      continuation = context.slice(-n) + continuation;
      context = context.slice(0, -n);
    }
    const whole = enc(context + continuation);
    ctx = enc(context);
    cont = whole.slice(ctx.length);
  }
  let ids = [...ctx, ...cont];
  if (ids.length > maxTokens) ids = ids.slice(ids.length - maxTokens);
  if (cont.length >= ids.length) {
    throw new Error(`a continuation of ${cont.length} tokens leaves no context within the model's ${maxTokens} positions: ${JSON.stringify(continuation.slice(0, 80))}`);
  }
  return { ids: Int32Array.from(ids), contLen: cont.length };
}

/**
 * Runs `count` right-padded sequences (ids (count, T)) through the model and hands each one's
 * per-token losses (T; losses[t] = −log p(ids[t+1] | ids[..t])) to onSeq.
 */
export type BatchRunner = (ids: Int32Array, count: number, T: number, onSeq: (i: number, losses: Float32Array) => void) => void;

/**
 * Summed continuation log-likelihood of every request, in order, each distinct sequence run
 * once (see the file header); `groups` gives the doc of each request (prefix sharing stays
 * within a doc). `batch` sequences per call of `run`.
 */
export function scoreRequests(
  reqs: TokenRequest[],
  groups: number[],
  batch: number,
  run: BatchRunner,
  onBatch?: (done: number, total: number) => void,
): { lls: number[]; sequences: number; tokens: number } {
  // distinct sequences
  const rowOf = new Map<string, number>();
  const rows: Int32Array[] = [];
  const reqRow = reqs.map((r) => {
    const key = r.ids.join(',');
    let row = rowOf.get(key);
    if (row === undefined) {
      row = rows.length;
      rowOf.set(key, row);
      rows.push(r.ids);
    }
    return row;
  });
  // within a doc, a sequence that is a prefix of a longer one is read from the longer one's row
  const readFrom = rows.map((_, i) => i);
  const byGroup = new Map<number, number[]>();
  reqs.forEach((_, i) => {
    const g = byGroup.get(groups[i]!) ?? [];
    if (!g.includes(reqRow[i]!)) g.push(reqRow[i]!);
    byGroup.set(groups[i]!, g);
  });
  const isPrefix = (a: Int32Array, b: Int32Array): boolean => a.length < b.length && a.every((x, k) => x === b[k]);
  for (const members of byGroup.values()) {
    for (const a of members) {
      const host = members.find((b) => readFrom[b] === b && isPrefix(rows[a]!, rows[b]!));
      if (host !== undefined && readFrom[a] === a) readFrom[a] = host;
    }
  }
  for (let i = 0; i < rows.length; i++) while (readFrom[readFrom[i]!] !== readFrom[i]) readFrom[i] = readFrom[readFrom[i]!]!;
  // the requests read from each run row
  const readers = new Map<number, number[]>();
  reqRow.forEach((row, i) => {
    const host = readFrom[row]!;
    readers.set(host, [...(readers.get(host) ?? []), i]);
  });
  const order = [...readers.keys()].sort((a, b) => rows[b]!.length - rows[a]!.length || a - b);
  const lls = new Array<number>(reqs.length).fill(NaN);
  const total = Math.ceil(order.length / batch);
  let tokens = 0;
  for (let b0 = 0, done = 0; b0 < order.length; b0 += batch) {
    const part = order.slice(b0, b0 + batch);
    const T = rows[part[0]!]!.length;
    const ids = new Int32Array(part.length * T); // (n, T), padded with token 0 after each sequence
    part.forEach((row, k) => ids.set(rows[row]!, k * T));
    tokens += part.length * T;
    run(ids, part.length, T, (k, losses) => {
      for (const i of readers.get(part[k]!)!) {
        const { ids: seq, contLen } = reqs[i]!;
        let ll = 0;
        for (let t = seq.length - contLen - 1; t < seq.length - 1; t++) ll -= losses[t]!;
        lls[i] = ll;
      }
    });
    onBatch?.(++done, total);
  }
  return { lls, sequences: order.length, tokens };
}

/** numpy.argmax: the first maximum (the first NaN when there is one). */
export function argmax(xs: number[]): number {
  let best = 0;
  for (let i = 0; i < xs.length; i++) {
    if (Number.isNaN(xs[i]!)) return i;
    if (xs[i]! > xs[best]!) best = i;
  }
  return best;
}

/** acc and acc_norm of one doc from its choices' log-likelihoods (lm-eval process_results). */
export function docScores(lls: number[], doc: McDoc): { pred: number; predNorm: number; acc: number; accNorm: number } {
  const pred = argmax(lls);
  const predNorm = argmax(lls.map((ll, i) => ll / Array.from(doc.choices[i]!).length));
  return { pred, predNorm, acc: pred === doc.gold ? 1 : 0, accNorm: predNorm === doc.gold ? 1 : 0 };
}

/** Mean and lm-eval's stderr of the mean (sample standard deviation / sqrt(n); null below 2 values). */
export function meanStderr(xs: number[]): { mean: number; stderr: number | null } {
  const n = xs.length;
  const mean = xs.reduce((s, x) => s + x, 0) / n;
  if (n < 2) return { mean, stderr: null };
  const ss = xs.reduce((s, x) => s + (x - mean) ** 2, 0);
  return { mean, stderr: Math.sqrt(ss / (n - 1)) / Math.sqrt(n) };
}

/**
 * Reads every task's docs before any model work: from `taskData` when given, else from the hub
 * (the split's parquet file in the Hugging Face cache, fetched when missing: src/io/hub.ts);
 * errors name the task and the files looked for.
 */
export async function loadTasks(tasks: McTask[], taskData: string | undefined, limit: number | undefined, hub: HubOptions = {}): Promise<LoadedTask[]> {
  if (limit !== undefined && !(Number.isInteger(limit) && limit >= 1)) throw new UsageError(`--limit must be an integer >= 1, got ${limit}`);
  if (taskData !== undefined) checkInputPath('--task-data', taskData, 'directory', 'a directory of task data files');
  const out: LoadedTask[] = [];
  for (const task of tasks) {
    let files: string[] | null;
    if (taskData !== undefined) {
      files = taskFiles(taskData, task);
      if (!files) throw new Error(`--task-data ${taskData}: no data for ${task.name} (looked for ${taskFileCandidates(taskData, task)})`);
    } else {
      files = await hubDatasetFiles(task.hub.repo, [task.hub.path], HUB_PARQUET_REVISION, { flag: `--tasks ${task.name}`, ...hub });
    }
    out.push(await loadTaskDocs(task, files, limit));
  }
  return out;
}

/** The runner of a resident Model: model.windowLosses over sequences of length T. */
function modelRunner<A>(model: Model<A>): BatchRunner {
  return (ids, count, T, onSeq) => model.windowLosses(ids, count, onSeq, undefined, T);
}

/** Scores loaded tasks on the model in `modelDir` (already checked), building the result. */
function scoreTasks<A>(be: Backend<A>, src: WeightSource, tok: Tokenizer, loaded: LoadedTask[], opts: ZeroShotOptions, t0: number): ZeroShotResult {
  const maxTokens = Math.max(2, src.cfg.maxPositionEmbeddings);
  const prefixId = tok.bosId ?? tok.eosIds[0];
  if (prefixId === undefined) throw new Error('the tokenizer has neither a bos nor an eos token to stand for an empty context');
  const reqs: TokenRequest[] = [];
  const groups: number[] = [];
  const cache = new Map<string, number[]>();
  let group = 0;
  for (const { task, docs } of loaded) {
    docs.forEach((doc, d) => {
      cache.clear();
      for (const r of doc.requests) {
        try {
          reqs.push(encodeRequest(tok, r.context, r.continuation, prefixId, maxTokens, cache));
        } catch (e) {
          throw new Error(`${task.name} doc ${d + 1}: ${(e as Error).message}`);
        }
        groups.push(group);
      }
      group++;
    });
  }
  const batch = opts.batch ?? EVAL_DEFAULTS.batch;
  const longest = reqs.reduce((m, r) => Math.max(m, r.ids.length), 1);
  const model = new Model(be, src, { residency: 'resident', precision: opts.precision ?? (be.name === 'cuda' ? 'bf16' : 'f32'), B: Math.min(batch, reqs.length), T: longest });
  let scored: ReturnType<typeof scoreRequests>;
  try {
    let bar: Progress | null = null;
    scored = scoreRequests(reqs, groups, batch, modelRunner(model), (done, total) => {
      bar ??= progress('zero-shot', total, { quiet: opts.quiet ?? false });
      bar.update(done);
    });
    (bar as Progress | null)?.stop();
  } finally {
    model.free();
  }
  const bad = scored.lls.findIndex((x) => !Number.isFinite(x));
  if (bad >= 0) throw new Error(`a log-likelihood is ${scored.lls[bad]} although every weight is finite: the forward overflowed; try --precision f32`);
  const details: ZeroShotDocDetail[] = [];
  const tasks: ZeroShotTaskResult[] = [];
  let next = 0;
  for (const { task, docs, rows, files } of loaded) {
    const accs: number[] = [];
    const norms: number[] = [];
    docs.forEach((doc, d) => {
      const lls = scored.lls.slice(next, next + doc.requests.length);
      const tokens = reqs.slice(next, next + doc.requests.length).map((r) => r.contLen);
      next += doc.requests.length;
      const s = docScores(lls, doc);
      accs.push(s.acc);
      norms.push(s.accNorm);
      if (opts.details) details.push({ task: task.name, doc: d, lls, tokens, gold: doc.gold, pred: s.pred, predNorm: s.predNorm });
    });
    const acc = meanStderr(accs);
    const norm = task.metrics.includes('acc_norm') ? meanStderr(norms) : null;
    tasks.push({
      task: task.name,
      split: task.split,
      docs: docs.length,
      rows,
      acc: acc.mean,
      accStderr: acc.stderr,
      accNorm: norm ? norm.mean : null,
      accNormStderr: norm ? norm.stderr : null,
      files,
    });
  }
  return {
    tasks,
    averageAcc: tasks.reduce((s, t) => s + t.acc, 0) / tasks.length,
    requests: reqs.length,
    sequences: scored.sequences,
    tokens: scored.tokens,
    seconds: (performance.now() - t0) / 1000,
    ...(opts.details ? { details } : {}),
  };
}

/**
 * Zero-shot evaluation of the model in `modelDir` (a directory, full precision or an eqat
 * checkpoint computed on its packed weights, or a hub name org/name[@revision]) on `opts.tasks`:
 * the data is read and checked first, then the model.
 */
export async function evaluateZeroShot(modelDir: string, opts: ZeroShotOptions): Promise<ZeroShotResult> {
  const t0 = performance.now();
  if (opts.precision === 'bf16' && opts.device !== 'cuda') throw new UsageError(`--precision: ${BF16_NEEDS_CUDA}`);
  if (opts.batch !== undefined && !(Number.isInteger(opts.batch) && opts.batch >= 1)) throw new UsageError(`--batch must be an integer >= 1, got ${opts.batch}`);
  const checkModel = () => checkInputPath('--model', modelDir, 'directory', 'a model directory or a hub name org/name[@revision]');
  if (existsSync(modelDir) || !parseHubName(modelDir)) checkModel(); // a local path: checked before the data is read
  const loaded = await loadTasks(opts.tasks, opts.taskData, opts.limit, { quiet: opts.quiet, ...opts.hub });
  modelDir = await resolveModel(modelDir, { flag: '--model', quiet: opts.quiet, ...opts.hub });
  checkModel();
  const src = WeightSource.open(modelDir);
  try {
    src.checkTensors();
    const tok = loadTokenizer(modelDir);
    return opts.device === 'cuda' ? scoreTasks(cudaBackend, src, tok, loaded, opts, t0) : scoreTasks(cpuBackend, src, tok, loaded, opts, t0);
  } finally {
    src.close();
  }
}

const pct = (x: number | null): string => (x === null ? '—' : x.toFixed(4));

/** The result as a table (lm-eval's columns: acc, acc_norm, each with its stderr) and the paper's average. */
export function formatZeroShot(r: ZeroShotResult): string {
  const head = ['task', 'split', 'docs', 'acc', '± stderr', 'acc_norm', '± stderr'];
  const body = r.tasks.map((t) => [t.task, t.split, String(t.docs), pct(t.acc), pct(t.accStderr), pct(t.accNorm), pct(t.accNormStderr)]);
  const rows = [head, ...body];
  const w = head.map((_, c) => Math.max(...rows.map((row) => row[c]!.length)));
  const line = (row: string[]): string => row.map((x, c) => (c >= 2 ? x.padStart(w[c]!) : x.padEnd(w[c]!))).join('  ').trimEnd();
  return [
    line(head),
    ...body.map(line),
    `average acc over ${r.tasks.length} task${r.tasks.length === 1 ? '' : 's'} (the paper's Avg.): ${pct(r.averageAcc)}`,
    `${r.requests} requests, ${r.sequences} sequences forwarded (${r.tokens} tokens), ${r.seconds.toFixed(1)} s`,
  ].join('\n');
}
