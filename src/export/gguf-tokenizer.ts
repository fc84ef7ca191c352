// The tokenizer of a Hugging Face checkpoint as GGUF metadata (tokenizer.ggml.*), so that
// llama.cpp tokenizes text exactly as the checkpoint's tokenizer.json does.
//
// Two tokenizer families are mapped, both from tokenizer.json (a BPE model):
//
//   byte-level BPE (GPT-2 / Llama-3 style)  tokenizer.ggml.model = "gpt2": the vocabulary in its
//     byte-to-unicode spelling, the merges as "left right" strings, and tokenizer.ggml.pre naming
//     the pre-tokenizer regex llama.cpp should split with. Recognised pre-tokenizers:
//       ByteLevel(use_regex, no prefix space)                      → "gpt-2"
//       Sequence[Split(Llama-3 regex, Isolated), ByteLevel(no regex)] → "llama-bpe"
//     Anything else is refused with the pre_tokenizer it found: a wrong regex would tokenize
//     differently without any error. Decoding is llama.cpp's own: for "gpt-2" and "llama-bpe"
//     its detokenizer removes a space before punctuation (" ." → "."), as transformers did before
//     4.45 (clean_up_tokenization_spaces); no GGUF key turns that off, so text from llama.cpp
//     can differ in those spaces from eqat's decode of the same ids.
//   SentencePiece-style BPE (Llama-2 style: byte_fallback, "▁" for spaces, a Prepend/Replace
//     normalizer or a Metaspace pre-tokenizer) → tokenizer.ggml.model = "llama" with per-token
//     scores and types. llama.cpp's SentencePiece tokenizer repeatedly merges the adjacent pair
//     whose concatenation has the highest score (ties: leftmost); tokenizer.json BPE merges the
//     pair of lowest merge rank (ties: leftmost). Giving each token the score −(rank of the first
//     merge that produces it) makes the two procedures pick the same pair at every step.
//     Tokens no merge produces (bytes, single characters, specials) get −(merges + id); they are
//     never the product of a merge, so their score is never consulted. With the Llama-2
//     normalizer (Prepend "▁" + Replace " " → "▁") the tokenization is identical; with the newer
//     Metaspace pre-tokenizer it differs only on text starting with a space (Metaspace does not
//     add a second "▁" there, llama.cpp does).
//
// Token types (llama.cpp's): 1 normal, 2 unknown, 3 control (special added tokens), 4 user
// defined (other added tokens), 5 unused (ids padding the vocabulary up to the embedding's
// rows), 6 byte (<0xNN> byte-fallback tokens).
//
// Special ids: bos/eos as eqat's tokenizer resolves them (src/io/tokenizer.ts); whether bos/eos
// are added is read off the tokenizer itself (src/export/special-tokens.ts).
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { CheckpointError, isJsonObject } from '../io/errors.js';
import { specialTokens } from './special-tokens.js';
import type { GgufKv } from './gguf.js';

/** llama.cpp token types (tokenizer.ggml.token_type). */
export const TOKEN_TYPE = { normal: 1, unknown: 2, control: 3, userDefined: 4, unused: 5, byte: 6 } as const;

/** The split regex of Llama-3's tokenizer.json, which llama.cpp knows as pre-tokenizer "llama-bpe". */
export const LLAMA3_SPLIT_REGEX =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/** GPT-2's split regex (what ByteLevel with use_regex applies). */
export const GPT2_SPLIT_REGEX = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

const METASPACE = '\u2581';

export interface GgufTokenizer {
  /** tokenizer.ggml.model */
  model: 'gpt2' | 'llama';
  /** tokenizer.ggml.pre */
  pre: string;
  /** Every tokenizer.* key/value, in writing order. */
  kv: GgufKv[];
}

type Json = Record<string, unknown>;

function readJsonObject(path: string, what: string): Json {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new CheckpointError(path, `cannot read ${what} (${(e as Error).message})`);
  }
  if (!isJsonObject(v)) throw new CheckpointError(path, `${what} must be a JSON object`);
  return v;
}

function typeOf(node: unknown): string | null {
  return isJsonObject(node) && typeof node['type'] === 'string' ? node['type'] : null;
}

/** The regex string of a Split pre-tokenizer's pattern ({Regex} or {String}), or null. */
function splitRegex(node: Json): string | null {
  const p = node['pattern'];
  if (!isJsonObject(p)) return null;
  if (typeof p['Regex'] === 'string') return p['Regex'];
  return null;
}

function isByteLevel(node: unknown, useRegex: boolean): boolean {
  if (typeOf(node) !== 'ByteLevel') return false;
  const n = node as Json;
  if (n['add_prefix_space'] === true) return false;
  return (n['use_regex'] ?? true) === useRegex;
}

/** tokenizer.ggml.pre for a byte-level BPE pre_tokenizer, or an error naming what was found. */
function bytePreTokenizer(pre: unknown, file: string): string {
  if (isByteLevel(pre, true)) return 'gpt-2';
  if (typeOf(pre) === 'Sequence') {
    const list = (pre as Json)['pretokenizers'];
    if (Array.isArray(list) && list.length === 2 && typeOf(list[0]) === 'Split' && isByteLevel(list[1], false)) {
      const split = list[0] as Json;
      const regex = splitRegex(split);
      const isolated = split['behavior'] === 'Isolated' && split['invert'] !== true;
      if (isolated && regex === LLAMA3_SPLIT_REGEX) return 'llama-bpe';
      if (isolated && regex === GPT2_SPLIT_REGEX) return 'gpt-2';
    }
    if (Array.isArray(list) && list.length === 1 && isByteLevel(list[0], true)) return 'gpt-2';
  }
  if (typeOf(pre) === 'ByteLevel' && (pre as Json)['add_prefix_space'] === true) {
    throw new CheckpointError(file, 'byte-level pre_tokenizer with add_prefix_space=true has no llama.cpp equivalent');
  }
  throw new CheckpointError(
    file,
    `pre_tokenizer ${JSON.stringify(pre).slice(0, 300)} is not one the GGUF export can map to a llama.cpp pre-tokenizer ` +
      `(supported: ByteLevel with its GPT-2 regex → "gpt-2", Llama-3's Split regex + ByteLevel → "llama-bpe")`,
  );
}

/** Whether a SentencePiece-style tokenizer prepends "▁" to the text; throws for layouts it does not know. */
function spmSpacePrefix(tok: Json, file: string): boolean {
  const norm = tok['normalizer'] ?? null;
  const pre = tok['pre_tokenizer'] ?? null;
  if (norm !== null) {
    // Llama-2's tokenizer.json: Sequence[Prepend("▁"), Replace(" " → "▁")]
    const steps = typeOf(norm) === 'Sequence' ? (norm as Json)['normalizers'] : [norm];
    if (!Array.isArray(steps)) throw new CheckpointError(file, 'normalizer Sequence without a normalizers list');
    let prepend = false;
    let replace = false;
    for (const s of steps) {
      const t = typeOf(s);
      const n = s as Json;
      if (t === 'Prepend' && n['prepend'] === METASPACE) prepend = true;
      else if (t === 'Replace' && isJsonObject(n['pattern']) && (n['pattern'] as Json)['String'] === ' ' && n['content'] === METASPACE) replace = true;
      else throw new CheckpointError(file, `normalizer step ${JSON.stringify(s).slice(0, 200)} has no llama.cpp SentencePiece equivalent`);
    }
    if (!replace) throw new CheckpointError(file, 'SentencePiece-style normalizer does not replace spaces with "▁"');
    if (pre !== null) throw new CheckpointError(file, 'SentencePiece-style tokenizer with both a normalizer and a pre_tokenizer is not supported');
    return prepend;
  }
  if (typeOf(pre) === 'Metaspace') {
    const m = pre as Json;
    if ((m['replacement'] ?? METASPACE) !== METASPACE) throw new CheckpointError(file, `Metaspace replacement ${JSON.stringify(m['replacement'])} is not "▁"`);
    if (m['split'] !== false) {
      throw new CheckpointError(file, 'Metaspace pre_tokenizer with split=true (words split at "▁" before BPE) has no llama.cpp equivalent');
    }
    const scheme = m['prepend_scheme'];
    if (scheme === 'never') return false;
    // Metaspace prepends "▁" only when the text does not already start with one (and, for
    // 'first', not after a special token), while llama.cpp always adds a space: the two differ
    // on text that starts with a space or follows a special token, nowhere else.
    if (scheme === 'first' || scheme === 'always') return true;
    return m['add_prefix_space'] !== false;
  }
  throw new CheckpointError(
    file,
    `byte-fallback BPE tokenizer without a "▁" normalizer or Metaspace pre_tokenizer (pre_tokenizer ${JSON.stringify(pre).slice(0, 200)}) is not supported`,
  );
}

function mergePair(m: unknown, i: number, file: string): [string, string] {
  if (typeof m === 'string') {
    const at = m.indexOf(' ', 1);
    if (at < 0) throw new CheckpointError(file, `merges[${i}] = ${JSON.stringify(m)} is not "left right"`);
    return [m.slice(0, at), m.slice(at + 1)];
  }
  if (Array.isArray(m) && m.length === 2 && typeof m[0] === 'string' && typeof m[1] === 'string') return [m[0], m[1]];
  throw new CheckpointError(file, `merges[${i}] must be a "left right" string or a [left, right] pair`);
}

/**
 * The tokenizer.* metadata for `modelDir`'s tokenizer.json, with the token list padded to
 * `vocabSize` (the embedding's rows). Throws before anything is written for a tokenizer the
 * export cannot reproduce in llama.cpp.
 */
export function ggufTokenizerMetadata(modelDir: string, vocabSize: number): GgufTokenizer {
  const file = join(modelDir, 'tokenizer.json');
  if (!existsSync(file)) throw new CheckpointError(modelDir, 'no tokenizer.json (the GGUF export takes the vocabulary from it)');
  const tok = readJsonObject(file, 'tokenizer.json');
  const model = tok['model'];
  if (!isJsonObject(model)) throw new CheckpointError(file, "no 'model' object");
  if (model['type'] !== 'BPE') {
    throw new CheckpointError(file, `tokenizer model type '${String(model['type'])}' is not supported by the GGUF export (only BPE)`);
  }
  const vocab = model['vocab'];
  if (!isJsonObject(vocab)) throw new CheckpointError(file, "model.vocab must be an object");
  const mergesRaw = model['merges'] ?? [];
  if (!Array.isArray(mergesRaw)) throw new CheckpointError(file, 'model.merges must be a list');
  const merges = mergesRaw.map((m, i) => mergePair(m, i, file));
  const byteFallback = model['byte_fallback'] === true;
  const kind: 'gpt2' | 'llama' = byteFallback ? 'llama' : 'gpt2';

  const tokens: (string | null)[] = new Array(vocabSize).fill(null);
  const types = new Int32Array(vocabSize);
  const place = (text: string, id: unknown, type: number, what: string): void => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0) throw new CheckpointError(file, `${what} ${JSON.stringify(text)} has id ${String(id)}`);
    if (id >= vocabSize) {
      throw new CheckpointError(file, `${what} ${JSON.stringify(text)} has id ${id}, beyond the model's vocab_size ${vocabSize} (embedding rows)`);
    }
    tokens[id] = text;
    types[id] = type;
  };
  const unkName = typeof model['unk_token'] === 'string' ? model['unk_token'] : null;
  for (const [text, id] of Object.entries(vocab)) {
    let type: number = TOKEN_TYPE.normal;
    if (kind === 'llama' && /^<0x[0-9A-Fa-f]{2}>$/.test(text)) type = TOKEN_TYPE.byte;
    if (text === unkName) type = TOKEN_TYPE.unknown;
    place(text, id, type, 'token');
  }
  const added = tok['added_tokens'] ?? [];
  if (!Array.isArray(added)) throw new CheckpointError(file, 'added_tokens must be a list');
  for (const a of added) {
    if (!isJsonObject(a) || typeof a['content'] !== 'string') throw new CheckpointError(file, 'added_tokens entries need a string content');
    const content = a['content'];
    const type = content === unkName ? TOKEN_TYPE.unknown : a['special'] === true ? TOKEN_TYPE.control : TOKEN_TYPE.userDefined;
    place(content, a['id'], type, 'added token');
  }
  for (let id = 0; id < vocabSize; id++) {
    if (tokens[id] === null) {
      tokens[id] = `[PAD${id}]`;
      types[id] = TOKEN_TYPE.unused;
    }
  }

  // special ids and whether the tokenizer adds bos/eos
  const { bos, eos, prefix, suffix, addBos, addEos } = specialTokens(modelDir);
  if ((prefix.length > 0 && !addBos) || (suffix.length > 0 && !addEos)) {
    throw new CheckpointError(
      file,
      `the post-processor adds [${prefix.join(', ')}] before and [${suffix.join(', ')}] after the text; llama.cpp can only add bos before and eos after`,
    );
  }

  const kv: GgufKv[] = [];
  const pre = kind === 'gpt2' ? bytePreTokenizer(tok['pre_tokenizer'] ?? null, file) : 'default';
  kv.push({ key: 'tokenizer.ggml.model', value: { type: 'str', value: kind } });
  kv.push({ key: 'tokenizer.ggml.pre', value: { type: 'str', value: pre } });
  kv.push({ key: 'tokenizer.ggml.tokens', value: { type: 'arr_str', value: tokens as string[] } });
  if (kind === 'gpt2') {
    if ((tok['normalizer'] ?? null) !== null) {
      throw new CheckpointError(file, `byte-level BPE with a normalizer (${JSON.stringify(tok['normalizer']).slice(0, 200)}) is not supported`);
    }
    if (model['ignore_merges'] === true && pre !== 'llama-bpe') {
      throw new CheckpointError(file, `ignore_merges=true is only reproduced by llama.cpp's "llama-bpe" pre-tokenizer, not "${pre}"`);
    }
    kv.push({ key: 'tokenizer.ggml.token_type', value: { type: 'arr_i32', value: types } });
    kv.push({ key: 'tokenizer.ggml.merges', value: { type: 'arr_str', value: merges.map(([l, r]) => `${l} ${r}`) } });
  } else {
    const addSpacePrefix = spmSpacePrefix(tok, file);
    const ids = new Map<string, number>();
    tokens.forEach((t, id) => {
      if (!ids.has(t!)) ids.set(t!, id);
    });
    const scores = new Float32Array(vocabSize);
    const scored = new Uint8Array(vocabSize);
    merges.forEach(([l, r], rank) => {
      const id = ids.get(l + r);
      if (id === undefined) throw new CheckpointError(file, `merges[${rank}] = "${l} ${r}" produces a token that is not in the vocabulary`);
      if (!scored[id]) {
        scores[id] = -rank;
        scored[id] = 1;
      }
    });
    for (let id = 0; id < vocabSize; id++) if (!scored[id]) scores[id] = -(merges.length + id);
    kv.push({ key: 'tokenizer.ggml.scores', value: { type: 'arr_f32', value: scores } });
    kv.push({ key: 'tokenizer.ggml.token_type', value: { type: 'arr_i32', value: types } });
    kv.push({ key: 'tokenizer.ggml.add_space_prefix', value: { type: 'bool', value: addSpacePrefix } });
  }
  const checkId = (id: number, what: string): number => {
    if (id >= vocabSize) throw new CheckpointError(file, `${what} id ${id} is beyond vocab_size ${vocabSize}`);
    return id;
  };
  if (bos !== null) kv.push({ key: 'tokenizer.ggml.bos_token_id', value: { type: 'u32', value: checkId(bos, 'bos') } });
  if (eos !== null) kv.push({ key: 'tokenizer.ggml.eos_token_id', value: { type: 'u32', value: checkId(eos, 'eos') } });
  const unkId = unkName !== null ? (vocab[unkName] as number | undefined) : undefined;
  const cfgPath = join(modelDir, 'tokenizer_config.json');
  const tokCfg = existsSync(cfgPath) ? readJsonObject(cfgPath, 'tokenizer_config.json') : {};
  const idOfConfigToken = (key: string): number | null => {
    const v = tokCfg[key];
    const content = typeof v === 'string' ? v : isJsonObject(v) && typeof v['content'] === 'string' ? v['content'] : null;
    if (content === null) return null;
    const id = tokens.indexOf(content);
    return id >= 0 ? id : null;
  };
  const unk = unkId ?? idOfConfigToken('unk_token');
  if (unk !== null) kv.push({ key: 'tokenizer.ggml.unknown_token_id', value: { type: 'u32', value: checkId(unk, 'unk') } });
  const pad = idOfConfigToken('pad_token');
  if (pad !== null) kv.push({ key: 'tokenizer.ggml.padding_token_id', value: { type: 'u32', value: pad } });
  kv.push({ key: 'tokenizer.ggml.add_bos_token', value: { type: 'bool', value: addBos } });
  kv.push({ key: 'tokenizer.ggml.add_eos_token', value: { type: 'bool', value: addEos } });
  const template = tokCfg['chat_template'];
  if (typeof template === 'string') kv.push({ key: 'tokenizer.chat_template', value: { type: 'str', value: template } });
  else if (existsSync(join(modelDir, 'chat_template.jinja'))) {
    kv.push({ key: 'tokenizer.chat_template', value: { type: 'str', value: readFileSync(join(modelDir, 'chat_template.jinja'), 'utf8') } });
  }
  return { model: kind, pre, kv };
}
