// The checkpoint's tokenizer: tokenizer.json (+ tokenizer_config.json) run through the
// @huggingface/tokenizers package, which reproduces the Rust tokenizers pipeline (added-token
// splitting, normalizer, pre-tokenizer, BPE/Unigram/WordPiece model, post-processor, decoder).
//
// Special ids: bos is tokenizer_config.json's bos_token (a string or {content}) looked up in the
// vocabulary, else generation_config.json's bos_token_id, else config.json's. eosIds starts with
// tokenizer_config.json's eos_token and adds every id from generation_config.json's eos_token_id
// (config.json's when generation_config.json has none), so generation can stop on any of them.
//
// Throughput: encoding is linear in the text length, about 0.4–0.5 MB/s on one core for a
// byte-level BPE vocabulary (a 25 MB file takes about a minute and peaks near 1.2 GB of memory),
// so callers should tokenize large corpora once and cache the ids.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';
import { CheckpointError, describeJson, isJsonObject } from './errors.js';

export interface Tokenizer {
  /** Token ids of `text`; special tokens (e.g. bos) are added unless addSpecialTokens is false. */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** Text of `ids`; special tokens are dropped when skipSpecialTokens is true. */
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string;
  readonly bosId: number | null;
  readonly eosIds: number[];
  /** One past the largest token id (base vocabulary plus added tokens). */
  readonly vocabSize: number;
}

function readJson(path: string, what: string): unknown {
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (e) {
    throw new CheckpointError(path, `cannot read ${what} (${(e as Error).message})`);
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(path, `${what} is not valid JSON (${(e as Error).message})`);
  }
}

function readOptionalObject(path: string, what: string): Record<string, unknown> | null {
  if (!existsSync(path)) return null;
  const v = readJson(path, what);
  if (!isJsonObject(v)) throw new CheckpointError(path, `${what} must be a JSON object, got ${describeJson(v)}`);
  return v;
}

/** A token id or list of ids from a config key; null when absent. */
function idsOf(obj: Record<string, unknown> | null, key: string, file: string): number[] | null {
  const v = obj?.[key];
  if (v === undefined || v === null) return null;
  const list = Array.isArray(v) ? v : [v];
  for (const x of list) {
    if (typeof x !== 'number' || !Number.isSafeInteger(x) || x < 0) {
      throw new CheckpointError(file, `'${key}' must be a token id or a list of token ids, got ${JSON.stringify(v)}`);
    }
  }
  return list as number[];
}

class CheckpointTokenizer implements Tokenizer {
  readonly bosId: number | null;
  readonly eosIds: number[];
  readonly vocabSize: number;
  private readonly tok: HfTokenizer;

  constructor(tok: HfTokenizer, bosId: number | null, eosIds: number[], vocabSize: number) {
    this.tok = tok;
    this.bosId = bosId;
    this.eosIds = eosIds;
    this.vocabSize = vocabSize;
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    if (typeof text !== 'string') throw new TypeError(`encode: text must be a string, got ${typeof text}`);
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  decode(ids: number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (!Array.isArray(ids)) throw new TypeError('decode: ids must be an array of token ids');
    for (let i = 0; i < ids.length; i++) {
      const id = ids[i];
      if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new RangeError(`decode: ids[${i}] = ${String(id)} is not a token id (vocabulary size ${this.vocabSize})`);
      }
    }
    if (ids.length === 0) return '';
    return this.tok.decode(ids, { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }
}

/**
 * clean_up_tokenization_spaces where tokenizer_config.json does not set it: false, as in
 * transformers (since 4.45), so decoding keeps a space before punctuation (" ." stays " .").
 * transformers.js defaults to true, so the ONNX export writes the value out.
 */
export const CLEAN_UP_TOKENIZATION_SPACES_DEFAULT = false;

/** Loads dir/tokenizer.json with dir/tokenizer_config.json, generation_config.json and config.json for special ids. */
export function loadTokenizer(dir: string): Tokenizer {
  if (!existsSync(dir)) throw new CheckpointError(dir, 'checkpoint directory does not exist');
  const tokFile = join(dir, 'tokenizer.json');
  if (!existsSync(tokFile)) {
    const spm = existsSync(join(dir, 'tokenizer.model'))
      ? '; only a sentencepiece tokenizer.model is present — save the tokenizer with transformers (AutoTokenizer.from_pretrained(dir).save_pretrained(dir)) to produce tokenizer.json'
      : '';
    throw new CheckpointError(dir, `no tokenizer.json in this directory (eqat needs the Hugging Face fast-tokenizer file tokenizer.json)${spm}`);
  }
  const tokJson = readJson(tokFile, 'tokenizer.json');
  if (!isJsonObject(tokJson)) throw new CheckpointError(tokFile, `tokenizer.json must be a JSON object, got ${describeJson(tokJson)}`);
  if (!isJsonObject(tokJson.model)) throw new CheckpointError(tokFile, "tokenizer.json has no 'model' object");

  const cfgFile = join(dir, 'tokenizer_config.json');
  const tokCfg = readOptionalObject(cfgFile, 'tokenizer_config.json') ?? {};
  const genFile = join(dir, 'generation_config.json');
  const gen = readOptionalObject(genFile, 'generation_config.json');
  const modelCfgFile = join(dir, 'config.json');
  const modelCfg = readOptionalObject(modelCfgFile, 'config.json');

  let tok: HfTokenizer;
  try {
    tok = new HfTokenizer({ added_tokens: [], ...tokJson }, { clean_up_tokenization_spaces: CLEAN_UP_TOKENIZATION_SPACES_DEFAULT, ...tokCfg });
  } catch (e) {
    throw new CheckpointError(tokFile, `cannot build the tokenizer (${(e as Error).message})`);
  }

  const vocab = tok.get_vocab(true);
  let maxId = -1;
  for (const id of vocab.values()) if (id > maxId) maxId = id;
  const vocabSize = maxId + 1;

  const tokenId = (key: 'bos_token' | 'eos_token'): number | null => {
    const v = tokCfg[key];
    if (v === undefined || v === null) return null;
    const content = typeof v === 'string' ? v : isJsonObject(v) && typeof v.content === 'string' ? v.content : undefined;
    if (content === undefined) throw new CheckpointError(cfgFile, `'${key}' must be a string or {content: string}, got ${describeJson(v)}`);
    const id = tok.token_to_id(content);
    if (id === undefined) throw new CheckpointError(cfgFile, `${key} ${JSON.stringify(content)} is not in the vocabulary of ${tokFile}`);
    return id;
  };

  const fromGen = (key: string): number[] | null => idsOf(gen, key, genFile) ?? idsOf(modelCfg, key, modelCfgFile);

  const bosId = tokenId('bos_token') ?? fromGen('bos_token_id')?.[0] ?? null;
  const eosIds: number[] = [];
  const firstEos = tokenId('eos_token');
  if (firstEos !== null) eosIds.push(firstEos);
  for (const id of fromGen('eos_token_id') ?? []) if (!eosIds.includes(id)) eosIds.push(id);

  return new CheckpointTokenizer(tok, bosId, eosIds, vocabSize);
}
