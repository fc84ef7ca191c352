// Token windows for training, validation and evaluation.
//
// Calibration / training (sampleWindows): the documents are tokenised without special tokens and
// concatenated into one token stream, consecutive documents joined by the tokens of "\n\n"; the
// stream offset where each document starts is remembered. trainSize + valSize windows of seqlen
// tokens are then drawn at seeded random starts so that no two windows share a stream position;
// the first trainSize drawn are the training windows (in draw order, the one order used for every
// epoch), the rest are validation windows, so validation never overlaps training.
//
// How the starts are drawn: every set of K = trainSize + valSize pairwise disjoint windows of
// length L in a stream of N tokens is equally likely. Such sets correspond one-to-one to K-subsets
// of {0, ..., N - K*L + K - 1} (sort the starts s_0 < s_1 < ... and map s_i -> s_i - i*(L-1)), so
// we pick a uniform K-subset (Floyd's algorithm, exactly K draws), map it back to starts and put
// the windows in a random order (Fisher-Yates). Unlike drawing starts one by one and rejecting
// overlaps, this never stalls or fails while K*L <= N (down to a corpus that is tiled exactly), and
// it costs O(K log K) regardless of how crowded the stream is. Everything is a function of the
// seed (src/engine/random.ts Rng).
//
// Beginning of sequence: a window whose start is a document start gets the encoder's bos token
// (when it has one) as its first token, followed by seqlen-1 stream tokens; every other window is
// seqlen stream tokens. This matches the reference implementation, where only a window cut from
// the very beginning of a document carries the bos that tokenising the document added.
//
// Cost: tokenising a 25 MB corpus with a pure-JS tokenizer takes tens of seconds, while sampling
// needs only a fraction of the stream. Tokenising everything keeps the statistics exact (starts are
// uniform over the real token stream, which is unknown until the text is tokenised). To avoid paying
// for it more than once: tokenizeDocuments returns a TokenStream that sampleWindows accepts in place
// of the documents (so one run can sample several times from one tokenisation), and
// saveTokenStream / loadTokenStream keep it on disk between runs under a caller-chosen key (which
// must identify both the corpus contents and the tokenizer; see tokenStreamKey).
//
// Evaluation (evalWindows): the whole text is tokenised by one encode call without special tokens,
// as the perplexity protocol requires, and cut into floor(n / seqlen) consecutive windows.
import { createHash } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { Rng } from '../engine/random.js';

/** What the data code needs from a tokenizer (src/io/tokenizer.ts provides the real one). */
export interface TextEncoder {
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  readonly bosId: number | null;
}

/** A tokenised corpus: the concatenated token stream and where each document starts in it. */
export interface TokenStream {
  stream: Int32Array; // (nTokens,)
  docStarts: Int32Array; // (nDocs,) ascending stream offsets; documents with no tokens are left out
}

export interface WindowSample {
  train: Int32Array; // (trainSize, seqlen) flattened
  val: Int32Array; // (valSize, seqlen) flattened
  seqlen: number;
  trainStarts: Int32Array; // (trainSize,) stream offset of each training window
  valStarts: Int32Array; // (valSize,) stream offset of each validation window
}

export interface SampleOptions {
  seqlen: number;
  trainSize: number;
  valSize: number;
  seed: number;
}

/** Text placed between consecutive documents in the token stream. */
export const DOCUMENT_SEPARATOR = '\n\n';

/** Tokenises the documents (no special tokens) and joins them with the separator's tokens. */
export function tokenizeDocuments(docs: readonly string[], enc: TextEncoder): TokenStream {
  const sep = enc.encode(DOCUMENT_SEPARATOR, { addSpecialTokens: false });
  let stream = new Int32Array(1 << 16);
  let length = 0;
  const starts: number[] = [];
  const append = (ids: readonly number[]): void => {
    if (length + ids.length > stream.length) {
      let cap = stream.length * 2;
      while (cap < length + ids.length) cap *= 2;
      const grown = new Int32Array(cap);
      grown.set(stream.subarray(0, length));
      stream = grown;
    }
    for (let i = 0; i < ids.length; i++) stream[length + i] = ids[i]!;
    length += ids.length;
  };
  for (const doc of docs) {
    const ids = enc.encode(doc, { addSpecialTokens: false });
    if (ids.length === 0) continue;
    if (starts.length > 0) append(sep);
    starts.push(length);
    append(ids);
  }
  return { stream: stream.slice(0, length), docStarts: Int32Array.from(starts) };
}

/**
 * Draws trainSize + valSize pairwise disjoint windows of seqlen tokens (see the file header).
 * `corpus` is either the documents or their tokenizeDocuments result; `what` names the data in
 * error messages (e.g. the corpus path).
 */
export function sampleWindows(
  corpus: readonly string[] | TokenStream,
  enc: TextEncoder,
  opts: SampleOptions,
  what = 'sampleWindows',
): WindowSample {
  const { seqlen, trainSize, valSize, seed } = opts;
  checkInt(what, 'seqlen', seqlen, 1);
  checkInt(what, 'trainSize', trainSize, 0);
  checkInt(what, 'valSize', valSize, 0);
  if (!Number.isSafeInteger(seed)) throw new RangeError(`${what}: seed must be an integer (got ${seed})`);

  const ts = isTokenStream(corpus) ? corpus : tokenizeDocuments(corpus, enc);
  const { stream, docStarts } = ts;
  const count = trainSize + valSize;
  const needed = count * seqlen;
  if (stream.length < needed) {
    throw new RangeError(
      `${what}: corpus too small: it has ${stream.length} tokens, but ${trainSize} train + ${valSize} val ` +
        `non-overlapping windows of ${seqlen} tokens need ${needed} tokens`,
    );
  }
  if (needed > 0x7fffffff) throw new RangeError(`${what}: ${count} windows of ${seqlen} tokens exceed 2^31 tokens`);

  const starts = drawDisjointStarts(new Rng(seed), stream.length, seqlen, count);
  const bos = enc.bosId;
  const cut = (from: number, to: number): { tokens: Int32Array; starts: Int32Array } => {
    const tokens = new Int32Array((to - from) * seqlen); // (to - from, seqlen)
    for (let w = from; w < to; w++) {
      const s = starts[w]!;
      const row = tokens.subarray((w - from) * seqlen, (w - from + 1) * seqlen);
      if (bos !== null && isDocStart(docStarts, s)) {
        row[0] = bos;
        row.set(stream.subarray(s, s + seqlen - 1), 1);
      } else {
        row.set(stream.subarray(s, s + seqlen));
      }
    }
    return { tokens, starts: starts.slice(from, to) };
  };
  const train = cut(0, trainSize);
  const val = cut(trainSize, count);
  return { train: train.tokens, val: val.tokens, seqlen, trainStarts: train.starts, valStarts: val.starts };
}

/**
 * Starts of `count` pairwise disjoint windows of `len` tokens in a stream of `n` tokens, uniform
 * over all such sets, in random order. Requires count * len <= n.
 */
export function drawDisjointStarts(rng: Rng, n: number, len: number, count: number): Int32Array {
  const slots = n - count * len + count; // the compressed positions s_i - i*(len-1)
  // Floyd's algorithm: a uniform count-subset of [0, slots) with exactly `count` draws.
  const chosen = new Set<number>();
  for (let j = slots - count; j < slots; j++) {
    const t = rng.int(0, j + 1);
    chosen.add(chosen.has(t) ? j : t);
  }
  const sorted = Float64Array.from(chosen).sort();
  const starts = new Int32Array(count);
  for (let i = 0; i < count; i++) starts[i] = sorted[i]! + i * (len - 1);
  // Fisher-Yates: the draw order, whose prefix is the training set.
  for (let i = count - 1; i > 0; i--) {
    const j = rng.int(0, i + 1);
    const tmp = starts[i]!;
    starts[i] = starts[j]!;
    starts[j] = tmp;
  }
  return starts;
}

/**
 * The evaluation stream: `text` tokenised by one encode call without special tokens, cut into
 * floor(n / seqlen) consecutive non-overlapping windows; the remainder is dropped.
 */
export function evalWindows(
  text: string,
  enc: TextEncoder,
  seqlen: number,
  what = 'evalWindows',
): { windows: Int32Array; count: number } {
  checkInt(what, 'seqlen', seqlen, 1);
  const ids = enc.encode(text, { addSpecialTokens: false });
  const count = Math.floor(ids.length / seqlen);
  if (count === 0) {
    throw new RangeError(`${what}: evaluation text has ${ids.length} tokens, fewer than one window of seqlen ${seqlen}`);
  }
  const windows = new Int32Array(count * seqlen); // (count, seqlen)
  for (let i = 0; i < windows.length; i++) windows[i] = ids[i]!;
  return { windows, count };
}

/** A cache key for a token stream: hash of the corpus bytes and of the tokenizer's identity. */
export function tokenStreamKey(corpus: Uint8Array | string, tokenizerIdentity: Uint8Array | string): string {
  return tokenStreamKeyOf(createHash('sha256').update(corpus).digest('hex'), tokenizerIdentity);
}

/** tokenStreamKey from the corpus bytes' sha256 (hex), as src/io/fingerprint.ts computes it. */
export function tokenStreamKeyOf(corpusSha256: string, tokenizerIdentity: Uint8Array | string): string {
  const t = createHash('sha256').update(tokenizerIdentity).digest('hex');
  return createHash('sha256').update(`eqat-token-stream\0sep=${JSON.stringify(DOCUMENT_SEPARATOR)}\0corpus=${corpusSha256}\0tokenizer=${t}`).digest('hex');
}

// On-disk layout (little-endian): "EQTS" | u32 version | u32 keyBytes | key (utf8) | pad to 4 |
// sha256 (32 bytes) of the rest | u32 nDocs | u32 nTokens | docStarts i32[nDocs] | stream i32[nTokens].
// The checksum catches a damaged body (flipped bits, a partial copy) that would otherwise train
// on wrong tokens, or fail on every rerun, without a word.
const MAGIC = 0x53545145; // "EQTS" read as a little-endian u32
const VERSION = 2;
const SUM = 32;

/** Writes a token stream to `path` (atomically, via a temporary file) under `key`. */
export function saveTokenStream(path: string, ts: TokenStream, key: string): void {
  const keyBytes = Buffer.from(key, 'utf8');
  const sumAt = align4(12 + keyBytes.length);
  const headerLen = sumAt + SUM + 8;
  const buf = Buffer.alloc(headerLen + 4 * (ts.docStarts.length + ts.stream.length));
  buf.writeUInt32LE(MAGIC, 0);
  buf.writeUInt32LE(VERSION, 4);
  buf.writeUInt32LE(keyBytes.length, 8);
  buf.write(key, 12, 'utf8');
  buf.writeUInt32LE(ts.docStarts.length, headerLen - 8);
  buf.writeUInt32LE(ts.stream.length, headerLen - 4);
  const body = new Int32Array(buf.buffer, buf.byteOffset + headerLen, ts.docStarts.length + ts.stream.length);
  body.set(ts.docStarts, 0);
  body.set(ts.stream, ts.docStarts.length);
  createHash('sha256').update(buf.subarray(sumAt + SUM)).digest().copy(buf, sumAt);
  mkdirSync(dirname(path), { recursive: true });
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, new Uint8Array(buf.buffer, buf.byteOffset, buf.length));
  renameSync(tmp, path);
}

/**
 * Reads a token stream saved under the same key; null when absent, of another format version
 * (stale), or damaged. `onDamaged` hears why a file of this version cannot be used (another key
 * in it, cut short, checksum mismatch, unreadable).
 */
export function loadTokenStream(path: string, key: string, onDamaged: (problem: string) => void = () => {}): TokenStream | null {
  let buf: Buffer;
  try {
    buf = readFileSync(path);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') onDamaged(`unreadable: ${(e as Error).message}`);
    return null;
  }
  const damaged = (problem: string): null => {
    onDamaged(problem);
    return null;
  };
  if (buf.length < 12 || buf.readUInt32LE(0) !== MAGIC) return damaged('not a token stream file');
  if (buf.readUInt32LE(4) !== VERSION) return null; // another eqat's format: stale, rebuilt silently
  const keyLen = buf.readUInt32LE(8);
  const sumAt = align4(12 + keyLen);
  const headerLen = sumAt + SUM + 8;
  if (buf.length < headerLen) return damaged(`cut short: ${buf.length} bytes`);
  if (buf.toString('utf8', 12, 12 + keyLen) !== key) return damaged('it holds another key');
  const nDocs = buf.readUInt32LE(headerLen - 8);
  const nTokens = buf.readUInt32LE(headerLen - 4);
  const want = headerLen + 4 * (nDocs + nTokens);
  if (buf.length !== want) return damaged(`${buf.length} bytes where its header says ${want}`);
  if (!createHash('sha256').update(buf.subarray(sumAt + SUM)).digest().equals(buf.subarray(sumAt, sumAt + SUM))) {
    return damaged('checksum mismatch');
  }
  // Copy into fresh, aligned arrays (the Buffer's offset need not be a multiple of 4).
  const body = new Int32Array(nDocs + nTokens);
  new Uint8Array(body.buffer).set(new Uint8Array(buf.buffer, buf.byteOffset + headerLen, buf.length - headerLen));
  return { docStarts: body.slice(0, nDocs), stream: body.slice(nDocs) };
}

function align4(n: number): number {
  return (n + 3) & ~3;
}

function isTokenStream(c: readonly string[] | TokenStream): c is TokenStream {
  return !Array.isArray(c) && (c as TokenStream).stream instanceof Int32Array;
}

/** Binary search in the ascending docStarts. */
function isDocStart(docStarts: Int32Array, s: number): boolean {
  let lo = 0;
  let hi = docStarts.length - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const v = docStarts[mid]!;
    if (v === s) return true;
    if (v < s) lo = mid + 1;
    else hi = mid - 1;
  }
  return false;
}

function checkInt(what: string, name: string, v: number, min: number): void {
  if (!Number.isSafeInteger(v) || v < min) {
    throw new RangeError(`${what}: ${name} must be an integer >= ${min} (got ${v})`);
  }
}
