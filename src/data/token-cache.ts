// A disk cache of tokenised calibration corpora: tokenising a 25 MB corpus takes about 18 s with
// the pure-JS tokenizer on one thread (a miss tokenises on every core: tokenize-parallel.ts), and
// every Block-AP/E2E-QP run on the same corpus and tokenizer needs the same stream. Keyed by the corpus bytes and the tokenizer.json text; a stale or
// damaged entry is simply rebuilt. Location: $EQAT_CACHE_DIR, else ~/.cache/eqat/tokens.
import { mkdirSync, readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { readDocuments } from './documents.js';
import { tokenizeDocumentsParallel } from './tokenize-parallel.js';
import { loadTokenStream, saveTokenStream, tokenStreamKey, type TextEncoder, type TokenStream } from './windows.js';

export function cacheDir(): string {
  return process.env['EQAT_CACHE_DIR'] ?? join(homedir(), '.cache', 'eqat');
}

/** The token stream of corpus `path` under the tokenizer in `tokenizerDir`, from cache when possible. */
export async function cachedTokenStream(path: string, tokenizerDir: string, enc: TextEncoder): Promise<TokenStream> {
  const docs = await readDocuments(path); // validates the corpus (clear errors) even on a cache hit
  const key = tokenStreamKey(readFileSync(path), readFileSync(join(tokenizerDir, 'tokenizer.json')));
  const dir = join(cacheDir(), 'tokens');
  const file = join(dir, `${key}.bin`);
  const hit = loadTokenStream(file, key);
  if (hit) return hit;
  const ts = await tokenizeDocumentsParallel(docs, tokenizerDir, enc);
  try {
    mkdirSync(dir, { recursive: true });
    saveTokenStream(file, ts, key);
  } catch {
    // an unwritable cache only costs time
  }
  return ts;
}
