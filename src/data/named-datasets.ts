// Datasets by name, as the official EfficientQAT code (and GPTQ, AutoRound, GPTQModel) accept
// them: `wikitext2` and `c4` for perplexity (eval's --data), `wikitext2`, `c4` and `redpajama`
// for calibration and training (--calib, --data / e2e_qp.data). Each name maps to files of its
// hub dataset, fetched through the Hugging Face cache (src/io/hub.ts); a local path that exists
// always wins over a name, and local files work as before.
//
// What each name is (README "Datasets by name" says the same):
//
//   wikitext2  dataset Salesforce/wikitext (the `wikitext` of load_dataset), main branch
//     perplexity   wikitext-2-raw-v1/test-00000-of-00001.parquet: every row of `text` (empty rows
//                  included) joined with "\n\n", tokenized once as the tokenizer's __call__ does
//                  (with its special tokens: Llama's bos first), cut into floor(n / seqlen)
//                  consecutive windows. = get_wikitext2(test_only) + test_ppl of the official code.
//     calibration  wikitext-2-raw-v1/train-00000-of-00001.parquet, read as a corpus (its
//                  non-blank rows are the documents; eqat's window sampling, src/data/windows.ts).
//   c4  dataset allenai/c4: the json.gz shards the official code names (not a parquet conversion,
//       whose rows could be split or ordered otherwise)
//     perplexity   en/c4-validation.00000-of-00008.json.gz: Python's random.seed(0), then 256 times
//                  { draw documents with randint(0, len - 1) until one has >= seqlen tokens (with
//                  special tokens); take the seqlen tokens at randint(0, ntok - seqlen - 1) } —
//                  the 256 × seqlen sample of get_c4(test_only) in the official code and GPTQ,
//                  reproduced draw for draw (src/data/py-random.ts). Windows cached per tokenizer.
//     calibration  en/c4-train.00000-of-01024.json.gz (the train shard the official code and
//                  GPTQ load): its first documents in file order (the shard is already shuffled)
//                  up to CALIB_CHARS characters, written once as a .jsonl corpus in the eqat cache.
//   redpajama  dataset togethercomputer/RedPajama-Data-1T-Sample (the "1T sample", ~1B tokens),
//              main branch: its 11 JSON-lines files (arxiv, book, c4, 5 common-crawl dumps,
//              github, stackexchange, wikipedia).
//     calibration  documents kept each with probability CALIB_CHARS / (total bytes) × 1.25
//                  (seeded, one pass over the files in the order above), up to CALIB_CHARS
//                  characters, written once as a .jsonl corpus in the eqat cache: a uniform sample
//                  of the mixture, as the official loader's shuffled draw is.
//     perplexity   none (the official code evaluates wikitext2 and c4 only).
//
// API (for the commands and other pipelines):
//   namedDataset(name)                      the table entry, or null (names are lower-case exact)
//   resolveCorpus(nameOrPath, opts)         a local corpus file for --calib / --data: the path as
//                                           given, or the named dataset's file (downloaded,
//                                           prepared); HubOptions as src/io/hub.ts takes them
//   namedEvalWindows(name, tok, tokenizerDir, seqlen, opts)
//                                           perplexity windows (count × seqlen token ids) of a name
//   readTextColumn(path)                    every row's `text` of a .parquet / .jsonl / .json.gz
//                                           file, empty rows included (null as '')
import { createHash } from 'node:crypto';
import { createReadStream, existsSync, mkdirSync, readFileSync, realpathSync, renameSync, rmSync, statSync, writeSync, openSync, closeSync } from 'node:fs';
import { basename, join } from 'node:path';
import { createInterface } from 'node:readline';
import { createGunzip } from 'node:zlib';
import { parquetMetadata, parquetReadObjects, parquetSchema } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { hubDatasetFiles, type HubOptions } from '../io/hub.js';
import { cacheDir } from './token-cache.js';
import { loadTokenStream, saveTokenStream, type TextEncoder } from './windows.js';
import { PyRandom } from './py-random.js';
import { Rng } from '../engine/random.js';

/** The dataset names eqat knows. */
export const DATASET_NAMES = ['wikitext2', 'c4', 'redpajama'] as const;
export type DatasetName = (typeof DATASET_NAMES)[number];

/** Characters of text a named calibration corpus keeps (c4, redpajama): ~16 M Llama tokens, twice the paper's 4096 × 2048. */
export const CALIB_CHARS = 64 * 2 ** 20;
/** Windows of the C4 perplexity sample. */
export const C4_EVAL_WINDOWS = 256;

export interface NamedDataset {
  name: DatasetName;
  /** Hub dataset repo id. */
  repo: string;
  /** Perplexity: the file and the protocol; null when the name is for calibration only. */
  eval: { file: string; protocol: 'joined' | 'c4-sample' } | null;
  /** Calibration: the files and how the corpus is made from them. */
  calib: { files: string[]; protocol: 'file' | 'prefix' | 'sample' };
}

const REDPAJAMA_FILES = [
  'arxiv_sample.jsonl',
  'book_sample.jsonl',
  'c4_sample.jsonl',
  'cc_2019-30_sample.jsonl',
  'cc_2020-05_sample.jsonl',
  'cc_2021-04_sample.jsonl',
  'cc_2022-05_sample.jsonl',
  'cc_2023-06_sample.jsonl',
  'github_sample.jsonl',
  'stackexchange_sample.jsonl',
  'wikipedia_sample.jsonl',
];

export const NAMED_DATASETS: Record<DatasetName, NamedDataset> = {
  wikitext2: {
    name: 'wikitext2',
    repo: 'Salesforce/wikitext',
    eval: { file: 'wikitext-2-raw-v1/test-00000-of-00001.parquet', protocol: 'joined' },
    calib: { files: ['wikitext-2-raw-v1/train-00000-of-00001.parquet'], protocol: 'file' },
  },
  c4: {
    name: 'c4',
    repo: 'allenai/c4',
    eval: { file: 'en/c4-validation.00000-of-00008.json.gz', protocol: 'c4-sample' },
    calib: { files: ['en/c4-train.00000-of-01024.json.gz'], protocol: 'prefix' },
  },
  redpajama: {
    name: 'redpajama',
    repo: 'togethercomputer/RedPajama-Data-1T-Sample',
    eval: null,
    calib: { files: REDPAJAMA_FILES, protocol: 'sample' },
  },
};

/** The named dataset `name` (exact, lower-case), or null. */
export function namedDataset(name: string): NamedDataset | null {
  return (DATASET_NAMES as readonly string[]).includes(name) ? NAMED_DATASETS[name as DatasetName] : null;
}

/** A name, not a path: no local file of that name exists and it is one of DATASET_NAMES. */
export function isDatasetName(s: string): boolean {
  return namedDataset(s) !== null && !existsSync(s);
}

export interface NamedDataOptions extends HubOptions {
  /** Where the eqat-prepared corpora and window caches go (default: the eqat cache, EQAT_CACHE_DIR). */
  eqatCacheDir?: string;
}

// -----------------------------------------------------------------------------------------
// Reading rows

/** The `text` of every row of a .parquet, .jsonl or .json.gz / .jsonl.gz file, in order; null rows as ''. */
export async function readTextColumn(path: string): Promise<string[]> {
  const rows: string[] = [];
  if (path.endsWith('.parquet')) {
    const bytes = readFileSync(path);
    const file = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
    let columns: string[];
    try {
      columns = parquetSchema(parquetMetadata(file)).children.map((c) => c.element.name);
    } catch (e) {
      throw new Error(`${path}: unreadable parquet file (${(e as Error).message})`);
    }
    if (!columns.includes('text')) throw new Error(`${path}: parquet file has no "text" column (columns: ${columns.join(', ') || 'none'})`);
    const objs = await parquetReadObjects({ file, columns: ['text'], compressors });
    objs.forEach((o, i) => {
      const t = o['text'];
      if (t !== null && t !== undefined && typeof t !== 'string') throw new Error(`${path}: row ${i}: "text" is not a string`);
      rows.push((t as string | null | undefined) ?? '');
    });
    return rows;
  }
  for await (const t of textLines(path)) rows.push(t);
  return rows;
}

/** The `text` field of each JSON line of a .jsonl or gzipped .json.gz / .jsonl.gz file, streamed. */
async function* textLines(path: string): AsyncGenerator<string> {
  const input = createReadStream(path);
  const stream = /\.gz$/.test(path) ? input.pipe(createGunzip()) : input;
  const lines = createInterface({ input: stream, crlfDelay: Infinity });
  let n = 0;
  try {
    for await (const line of lines) {
      n++;
      if (line.trim() === '') continue;
      let v: unknown;
      try {
        v = JSON.parse(line);
      } catch (e) {
        throw new Error(`${path}: line ${n}: invalid JSON (${(e as Error).message})`);
      }
      const t = (v as Record<string, unknown> | null)?.['text'];
      if (typeof t !== 'string') throw new Error(`${path}: line ${n}: no string "text" field`);
      yield t;
    }
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'Z_DATA_ERROR' || (e as NodeJS.ErrnoException).code === 'Z_BUF_ERROR') throw new Error(`${path}: damaged gzip data (${(e as Error).message})`);
    throw e;
  } finally {
    lines.close();
    input.destroy();
  }
}

/** Identity of a cached hub file: its blob name (the LFS sha256) when it is a cache link, else size and mtime. */
function fileIdentity(path: string): string {
  const real = realpathSync(path);
  const blob = basename(real);
  if (/^[0-9a-f]{40,64}$/.test(blob)) return blob;
  const st = statSync(real);
  return `${real}:${st.size}:${st.mtimeMs}`;
}

function shortHash(...parts: string[]): string {
  return createHash('sha256').update(parts.join('\0')).digest('hex').slice(0, 16);
}

// -----------------------------------------------------------------------------------------
// Calibration / training corpora

/**
 * The local corpus file for --calib / --data (e2e_qp.data): `nameOrPath` itself when it exists
 * or is no dataset name; for a name, its hub files (downloaded into the Hugging Face cache when
 * missing) and, for c4 and redpajama, the corpus prepared from them once in the eqat cache
 * (see the file header).
 */
export async function resolveCorpus(nameOrPath: string, opts: NamedDataOptions = {}): Promise<string> {
  if (!isDatasetName(nameOrPath)) return nameOrPath;
  const d = namedDataset(nameOrPath)!;
  const files = await hubDatasetFiles(d.repo, d.calib.files, null, opts);
  if (d.calib.protocol === 'file') return files[0]!;
  const ids = files.map(fileIdentity);
  const dir = join(opts.eqatCacheDir ?? cacheDir(), 'datasets');
  const out = join(dir, `${d.name}-${d.calib.protocol}-${shortHash(d.calib.protocol, String(CALIB_CHARS), ...ids)}.jsonl`);
  if (existsSync(out)) return out;
  mkdirSync(dir, { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    let chars = 0;
    const put = (t: string): boolean => {
      if (t.trim() === '') return true;
      writeSync(fd, JSON.stringify({ text: t }) + '\n');
      chars += t.length;
      return chars < CALIB_CHARS;
    };
    if (d.calib.protocol === 'prefix') {
      for await (const t of textLines(files[0]!)) if (!put(t)) break;
    } else {
      const total = files.reduce((a, f) => a + statSync(f).size, 0);
      const p = Math.min(1, (1.25 * CALIB_CHARS) / Math.max(total, 1));
      const rng = new Rng(0);
      outer: for (const f of files) {
        for await (const t of textLines(f)) {
          if (rng.next() < p && !put(t)) break outer;
        }
      }
    }
    if (chars === 0) throw new Error(`dataset ${d.repo}: ${d.calib.files.join(', ')} hold no text`);
  } catch (e) {
    closeSync(fd);
    rmSync(tmp, { force: true });
    throw e;
  }
  closeSync(fd);
  renameSync(tmp, out);
  return out;
}

// -----------------------------------------------------------------------------------------
// Perplexity windows

export interface NamedEvalWindows {
  /** (count, seqlen) token ids, flattened. */
  windows: Int32Array;
  count: number;
  /** The local file they came from. */
  source: string;
}

/**
 * The perplexity windows of the named dataset `name` for `seqlen` (see the file header for the
 * protocol of each): `tok` encodes, `tokenizerDir` holds its tokenizer.json (it keys the cache of
 * the C4 sample). Throws for a name without a perplexity split (redpajama).
 */
export async function namedEvalWindows(name: string, tok: TextEncoder, tokenizerDir: string, seqlen: number, opts: NamedDataOptions = {}): Promise<NamedEvalWindows> {
  const d = namedDataset(name);
  if (!d) throw new Error(`${name}: not a dataset name (names: ${DATASET_NAMES.join(', ')})`);
  if (!d.eval) {
    const evalNames = DATASET_NAMES.filter((n) => NAMED_DATASETS[n].eval);
    throw new Error(`--data ${name}: ${name} is a calibration dataset with no perplexity split; evaluate on ${evalNames.join(' or ')}, or pass a file`);
  }
  const [file] = await hubDatasetFiles(d.repo, [d.eval.file], null, opts);
  if (d.eval.protocol === 'joined') {
    const ids = tok.encode((await readTextColumn(file!)).join('\n\n'), { addSpecialTokens: true });
    const count = Math.floor(ids.length / seqlen);
    if (count === 0) throw new Error(`${file}: ${ids.length} tokens, fewer than one window of seqlen ${seqlen}`);
    return { windows: Int32Array.from(ids.slice(0, count * seqlen)), count, source: file! };
  }
  // the C4 sample, cached per source file, tokenizer and seqlen
  const key = `eqat-c4-eval\0v1\0${fileIdentity(file!)}\0${createHash('sha256').update(readFileSync(join(tokenizerDir, 'tokenizer.json'))).digest('hex')}\0${seqlen}\0${C4_EVAL_WINDOWS}`;
  const cached = join(opts.eqatCacheDir ?? cacheDir(), 'tokens', `c4-eval-${shortHash(key)}.bin`);
  const hit = loadTokenStream(cached, key);
  if (hit && hit.stream.length === C4_EVAL_WINDOWS * seqlen) return { windows: hit.stream, count: C4_EVAL_WINDOWS, source: file! };
  const docs = await readTextColumn(file!);
  const windows = c4EvalSample(docs, tok, seqlen, C4_EVAL_WINDOWS, file!);
  try {
    mkdirSync(join(opts.eqatCacheDir ?? cacheDir(), 'tokens'), { recursive: true });
    saveTokenStream(cached, { stream: windows, docStarts: new Int32Array(0) }, key);
  } catch {
    // an unwritable cache only costs time
  }
  return { windows, count: C4_EVAL_WINDOWS, source: file! };
}

/**
 * The C4 perplexity sample of the official code: random.seed(0); for each of `count` windows,
 * documents drawn by randint(0, len(docs) - 1) until one has at least seqlen tokens (encoded with
 * special tokens, as the tokenizer's __call__ does), then seqlen tokens from randint(0, ntok -
 * seqlen - 1). Where a document has exactly seqlen tokens Python's randint(0, -1) raises; here
 * the window starts at 0.
 */
export function c4EvalSample(docs: readonly string[], tok: TextEncoder, seqlen: number, count: number, what = 'c4'): Int32Array {
  if (docs.length === 0) throw new Error(`${what}: no documents`);
  const rng = new PyRandom(0);
  const out = new Int32Array(count * seqlen);
  const lengths = new Map<number, number[]>();
  const maxTries = 100 * docs.length + 1000;
  for (let w = 0; w < count; w++) {
    let ids: number[] | null = null;
    for (let tries = 0; ; tries++) {
      if (tries > maxTries) throw new Error(`${what}: no document of at least ${seqlen} tokens found in ${maxTries} draws; use a shorter --seqlen`);
      const i = rng.randint(0, docs.length - 1);
      let t = lengths.get(i);
      if (!t) {
        t = tok.encode(docs[i]!, { addSpecialTokens: true });
        if (t.length < seqlen) t = [];
        lengths.set(i, t);
      }
      if (t.length >= seqlen) {
        ids = t;
        break;
      }
    }
    const start = ids.length > seqlen ? rng.randint(0, ids.length - seqlen - 1) : 0;
    for (let k = 0; k < seqlen; k++) out[w * seqlen + k] = ids[start + k]!;
  }
  return out;
}
