// Tokenising a calibration corpus on several threads. The pure-JS tokenizer encodes about 1.4 MB
// of text per second per thread (calib.txt, 25.8 MB: 18.3 s on one thread of a 2-vCPU machine,
// 12.5 s on two), longer than Block-AP on a GPU takes to train a small model. The documents are
// cut into contiguous slices of about equal text length; each worker thread loads the tokenizer
// from the model directory and tokenises its slice with tokenizeDocuments; the slices' streams
// are joined in order with the separator's tokens (joinTokenStreams). The result is the stream that
// tokenizeDocuments over all documents gives, token for token (tested against it).
import { availableParallelism } from 'node:os';
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { loadTokenizer } from '../io/tokenizer.js';
import { DOCUMENT_SEPARATOR, tokenizeDocuments, type TextEncoder, type TokenStream } from './windows.js';

/** Corpora shorter than this many characters are tokenised on the calling thread. */
export const PARALLEL_MIN_CHARS = 2_000_000;

interface SliceJob {
  eqatTokenizeSlice: true;
  tokenizerDir: string;
  docs: string[];
}

/**
 * The stream of all documents from the streams of consecutive slices of them: slices that
 * produced tokens are joined by `sep`, their document starts shifted by where each lands.
 */
export function joinTokenStreams(parts: readonly TokenStream[], sep: readonly number[]): TokenStream {
  const nonEmpty = parts.filter((p) => p.stream.length > 0);
  const length = nonEmpty.reduce((n, p) => n + p.stream.length, 0) + Math.max(0, nonEmpty.length - 1) * sep.length;
  const stream = new Int32Array(length);
  const starts = new Int32Array(nonEmpty.reduce((n, p) => n + p.docStarts.length, 0));
  let at = 0, nStarts = 0;
  nonEmpty.forEach((p, i) => {
    if (i > 0) {
      stream.set(sep, at);
      at += sep.length;
    }
    for (const s of p.docStarts) starts[nStarts++] = s + at;
    stream.set(p.stream, at);
    at += p.stream.length;
  });
  return { stream, docStarts: starts };
}

/** Cuts docs into at most n contiguous slices of about equal total length (none empty). */
export function sliceDocuments(docs: readonly string[], n: number): string[][] {
  const total = docs.reduce((s, d) => s + d.length, 0);
  const slices: string[][] = [];
  let current: string[] = [], size = 0, done = 0;
  for (const d of docs) {
    current.push(d);
    size += d.length;
    done += d.length;
    // close the slice once it holds its share of what is left for the slices still to come
    const left = n - slices.length;
    if (left > 1 && size >= (total - done + size) / left) {
      slices.push(current);
      current = [];
      size = 0;
    }
  }
  if (current.length > 0) slices.push(current);
  return slices;
}

/**
 * The one message each worker posts, in the workers' order. A worker fails by posting an Error
 * (how the tokenizer workers report theirs), by an error thrown out of it, or by exiting before
 * its message. The first failure rejects the whole with its reason, once every worker is gone: the
 * others are terminated rather than left to finish a slice nobody will read, except one that died
 * of its own uncaught error, which is already exiting and is only waited for.
 *
 * Workers should post their errors rather than throw them: on Node 20 a terminate() that reaches a
 * worker while it enters its uncaught-exception handler aborts the whole process (SIGABRT, "FATAL
 * ERROR: v8::ToLocalChecked Empty MaybeLocal" in node::errors::TriggerUncaughtException, which
 * reads process._fatalException with ToLocalChecked). Two tokenizer workers that both threw at
 * load, the first one's error terminating the other, did that now and then. Terminating a worker
 * that runs ordinary code or waits idle is safe.
 */
export async function collectWorkerResults<T>(workers: readonly Worker[], what: string): Promise<T[]> {
  const gone = workers.map((worker) => new Promise<void>((resolve) => worker.once('exit', () => resolve())));
  const dying = new Set<Worker>();
  const results = workers.map(
    (worker) =>
      new Promise<T>((resolve, reject) => {
        worker.once('message', (result: T | Error) => (result instanceof Error ? reject(result) : resolve(result)));
        worker.once('error', (err) => {
          dying.add(worker);
          reject(err);
        });
        worker.once('exit', (code) => reject(new Error(`${what} worker exited with code ${code} before sending its result`)));
      }),
  );
  try {
    return await Promise.all(results);
  } catch (err) {
    await Promise.allSettled(workers.map((w, i) => (dying.has(w) ? gone[i] : w.terminate())));
    throw err;
  }
}

/**
 * tokenizeDocuments(docs, enc) computed on up to `threads` worker threads, each loading the
 * tokenizer of `tokenizerDir` (the one enc was loaded from). Small corpora stay on this thread.
 */
export async function tokenizeDocumentsParallel(
  docs: readonly string[],
  tokenizerDir: string,
  enc: TextEncoder,
  { threads = availableParallelism(), minChars = PARALLEL_MIN_CHARS }: { threads?: number; minChars?: number } = {},
): Promise<TokenStream> {
  const chars = docs.reduce((s, d) => s + d.length, 0);
  if (threads <= 1 || docs.length < 2 || chars < minChars) return tokenizeDocuments(docs, enc);
  const slices = sliceDocuments(docs, threads);
  const workers = slices.map(
    (slice) => new Worker(new URL(import.meta.url), { workerData: { eqatTokenizeSlice: true, tokenizerDir, docs: slice } satisfies SliceJob }),
  );
  const parts = await collectWorkerResults<TokenStream>(workers, 'tokenizer');
  return joinTokenStreams(parts, enc.encode(DOCUMENT_SEPARATOR, { addSpecialTokens: false }));
}

// Worker side: tokenise the slice and hand its arrays back without copying. Any error (above all a
// tokenizer that does not load) is posted as the worker's message rather than thrown, so that the
// worker never dies of an uncaught exception while collectWorkerResults may be terminating it.
if (!isMainThread && parentPort && (workerData as SliceJob | null)?.eqatTokenizeSlice === true) {
  const job = workerData as SliceJob;
  try {
    const ts = tokenizeDocuments(job.docs, loadTokenizer(job.tokenizerDir));
    parentPort.postMessage(ts, [ts.stream.buffer as ArrayBuffer, ts.docStarts.buffer as ArrayBuffer]);
  } catch (err) {
    parentPort.postMessage(err instanceof Error ? err : new Error(String(err)));
  }
}
