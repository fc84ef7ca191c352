// A disk cache of tokenised calibration corpora: tokenising a 25 MB corpus takes about 18 s with
// the pure-JS tokenizer on one thread (a miss tokenises on every core: tokenize-parallel.ts), and
// every Block-AP/E2E-QP run on the same corpus and tokenizer needs the same stream. Keyed by the
// corpus bytes' sha256 (the data's identity that the runs record: src/io/fingerprint.ts) and the
// tokenizer.json text; each entry carries a checksum of its body (windows.ts). A stale entry is
// rebuilt; a damaged one (flipped bytes, cut short) is rebuilt with a note, never trained on.
// Location: $EQAT_CACHE_DIR, else ~/.cache/eqat/tokens.
import { mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { readDocuments } from './documents.js';
import { tokenizeDocumentsParallel } from './tokenize-parallel.js';
import { loadTokenStream, saveTokenStream, tokenStreamKeyOf, type TextEncoder, type TokenStream } from './windows.js';
import { dataIdentity, type DataIdentity } from '../io/fingerprint.js';

export function cacheDir(): string {
  return process.env['EQAT_CACHE_DIR'] ?? join(homedir(), '.cache', 'eqat');
}

/** Where a damaged entry is reported by default: a line on stderr. */
function noteOnStderr(message: string): void {
  process.stderr.write(`note: ${message}\n`);
}

/** A tokenised corpus and the identity of the file it came from (what a run records). */
export interface CachedCorpus {
  tokens: TokenStream;
  identity: DataIdentity;
}

/** The token stream of corpus `path` under the tokenizer in `tokenizerDir`, from cache when possible. */
export async function cachedTokenStream(
  path: string,
  tokenizerDir: string,
  enc: TextEncoder,
  note: (message: string) => void = noteOnStderr,
): Promise<CachedCorpus> {
  const docs = await readDocuments(path); // validates the corpus (clear errors) even on a cache hit
  const data = dataIdentity(path);
  const key = tokenStreamKeyOf(data.sha256, readFileSync(join(tokenizerDir, 'tokenizer.json')));
  const dir = join(cacheDir(), 'tokens');
  const file = join(dir, `${key}.bin`);
  const hit = loadTokenStream(file, key, (problem) => note(`token cache entry ${file} is damaged (${problem}); rebuilding it`));
  if (hit) return { tokens: hit, identity: data };
  const ts = await tokenizeDocumentsParallel(docs, tokenizerDir, enc);
  try {
    mkdirSync(dir, { recursive: true });
    saveTokenStream(file, ts, key);
  } catch {
    // an unwritable cache only costs time
  }
  return { tokens: ts, identity: data };
}
