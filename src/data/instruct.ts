// Instruction data for E2E-QP: records read from JSON lines (Alpaca {instruction, input?, output}
// or chat {messages: [{role, content}, ...]}), laid out with the model's chat template or a plain
// template, tokenized, and turned into fixed-length supervised samples whose loss covers only
// the responses.
//
// Files: .jsonl (one record per line; blank lines skipped) or .json (an array of records),
// refused or warned about when too much of them is not text (checkText, src/data/documents.ts).
// Roles are system, user and assistant; a record needs at least one assistant message.
//
// Layout:
//   chat template (tokenizer_config.json `chat_template`, or chat_template.jinja): rendered with
//     @huggingface/jinja as transformers' apply_chat_template does (messages, bos_token,
//     eos_token, add_generation_prompt), tokenized without adding special tokens (the template
//     writes them). Assistant turn i is the text between render(messages[:i], generation
//     prompt) and render(messages[:i+1]) — the reply and the template's end-of-turn marker — and
//     both must be prefixes of the whole conversation. An Alpaca record becomes
//     [user: instruction (+ "\n\n" + input), assistant: output].
//   plain template (no chat template): bos, then
//     "### Instruction:\n{instruction}\n\n" ["### Input:\n{input}\n\n"] "### Response:\n" {output} eos
//     and for chat records "### System:\n{content}\n\n" per system message,
//     "### Instruction:\n{content}\n\n### Response:\n" per user message, {content} eos per
//     assistant message.
//
// Tokens: the text between two eos/bos ids is encoded in one piece (as the model sees it at
// inference), and the token where a response starts or ends is found by encoding the text up
// to that character: the first token where that encoding departs from the whole one is where
// the boundary falls (a token that straddles the start of a response belongs to the response).
//
// Samples: ids truncated to seqlen (the tail is dropped) and padded to exactly seqlen with eos
// (0 when the tokenizer has none). labels are already shifted: labels[t] = ids[t+1] when token
// t+1 belongs to a response (its text or its end-of-turn/eos tokens), else -100; the last real
// position and all padding are -100. A record with no response token inside the first seqlen
// tokens gives no sample and is skipped.
import { closeSync, existsSync, openSync, readFileSync, readSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { Template } from '@huggingface/jinja';
import { Rng } from '../engine/random.js';
import { CheckpointError, describeJson, isJsonObject } from '../io/errors.js';
import { checkText } from './documents.js';

/** What buildSupervisedSamples needs of a tokenizer (src/io/tokenizer.ts Tokenizer has it). */
export interface TokenizerLike {
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  readonly bosId: number | null;
  readonly eosIds: number[];
}

export type ChatRole = 'system' | 'user' | 'assistant';
export const CHAT_ROLES: readonly ChatRole[] = ['system', 'user', 'assistant'];

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/** One record; `where` ("file: line N" or "file: record N") is for error messages. */
export type InstructRecord =
  | { kind: 'alpaca'; instruction: string; input: string; output: string; where: string }
  | { kind: 'chat'; messages: ChatMessage[]; where: string };

export interface SupervisedSample {
  /** Token ids, padded. */
  ids: Int32Array; // (T)
  /** Next-token targets: labels[t] is the target of the prediction made at position t, or -100. */
  labels: Int32Array; // (T)
  /** Real (unpadded) tokens at the start of ids. */
  length: number;
  /** Index of the record the sample was built from. */
  record: number;
}

/** A chat template and the special-token strings it is rendered with. */
export interface ChatTemplate {
  source: string;
  /** tokenizer_config.json bos_token / eos_token (string or {content}); null when absent. */
  bosToken: string | null;
  eosToken: string | null;
  /** Where the template came from, for messages. */
  file: string;
}

/** Label value of positions without a target (PyTorch's cross-entropy ignore_index). */
export const IGNORE_INDEX = -100;

export const INSTRUCT_FILE_EXTENSIONS = ['.jsonl', '.json'] as const;

// ---------------------------------------------------------------------------------------------
// Reading records

/** Checks one decoded record; returns it typed or throws naming `where`. */
function parseRecord(value: unknown, where: string): InstructRecord {
  const fail = (problem: string): never => {
    throw new Error(`readInstructRecords: ${where}: ${problem}`);
  };
  if (!isJsonObject(value)) fail(`expected a JSON object, got ${describeJson(value)}`);
  const v = value as Record<string, unknown>;
  const isChat = 'messages' in v;
  const isAlpaca = 'instruction' in v || 'output' in v;
  if (isChat && isAlpaca) fail('has both "messages" and "instruction"/"output"; a record is either chat or Alpaca');
  if (!isChat && !isAlpaca) {
    const keys = Object.keys(v);
    fail(
      'neither an Alpaca record {instruction, input?, output} nor a chat record {messages: [{role, content}, ...]}' +
        ` (keys: ${keys.length ? keys.join(', ') : 'none'})`,
    );
  }
  if (isAlpaca) {
    for (const key of ['instruction', 'output']) {
      if (!(key in v)) fail(`missing "${key}" field`);
      if (typeof v[key] !== 'string') fail(`"${key}" must be a string, got ${describeJson(v[key])}`);
    }
    const input = v['input'];
    if (input !== undefined && input !== null && typeof input !== 'string') {
      fail(`"input" must be a string (or absent), got ${describeJson(input)}`);
    }
    return {
      kind: 'alpaca',
      instruction: v['instruction'] as string,
      input: (input as string | null | undefined) ?? '',
      output: v['output'] as string,
      where,
    };
  }
  const msgs = v['messages'];
  if (!Array.isArray(msgs)) fail(`"messages" must be an array, got ${describeJson(msgs)}`);
  if ((msgs as unknown[]).length === 0) fail('"messages" is empty');
  const messages: ChatMessage[] = [];
  (msgs as unknown[]).forEach((m, i) => {
    if (!isJsonObject(m)) fail(`messages[${i}] must be an object {role, content}, got ${describeJson(m)}`);
    const mm = m as Record<string, unknown>;
    if (typeof mm['role'] !== 'string' || !(CHAT_ROLES as readonly string[]).includes(mm['role'])) {
      fail(`messages[${i}].role must be one of ${CHAT_ROLES.join(', ')}, got ${describeJson(mm['role'])}`);
    }
    if (typeof mm['content'] !== 'string') fail(`messages[${i}].content must be a string, got ${describeJson(mm['content'])}`);
    messages.push({ role: mm['role'] as ChatRole, content: mm['content'] as string });
  });
  if (!messages.some((m) => m.role === 'assistant')) fail('no assistant message: nothing to train on');
  return { kind: 'chat', messages, where };
}

/**
 * Reads instruction records from .jsonl (one per line) or .json (an array). Errors name the
 * file and the line (record for .json): invalid JSON, neither format, wrong field types, a file
 * without records.
 */
export async function readInstructRecords(path: string): Promise<InstructRecord[]> {
  const ext = extname(path).toLowerCase();
  if (!(INSTRUCT_FILE_EXTENSIONS as readonly string[]).includes(ext)) {
    const got = ext === '' ? 'no extension' : `extension "${extname(path)}"`;
    throw new Error(`readInstructRecords: ${path}: unsupported instruction data format (${got}); supported: .jsonl, .json`);
  }
  if (!existsSync(path)) throw new Error(`readInstructRecords: ${path}: file not found`);
  if (!statSync(path).isFile()) throw new Error(`readInstructRecords: ${path}: not a regular file`);
  let text = await readFile(path, 'utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  checkText(path, text);
  const records: InstructRecord[] = [];
  if (ext === '.jsonl') {
    const lines = text.split('\n');
    for (let i = 0; i < lines.length; i++) {
      const line = lines[i]!;
      if (/^\s*$/.test(line)) continue;
      const where = `${path}: line ${i + 1}`;
      let value: unknown;
      try {
        value = JSON.parse(line);
      } catch (e) {
        throw new Error(`readInstructRecords: ${where}: invalid JSON (${(e as Error).message})`);
      }
      records.push(parseRecord(value, where));
    }
  } else {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch (e) {
      throw new Error(`readInstructRecords: ${path}: invalid JSON (${(e as Error).message})`);
    }
    if (!Array.isArray(value)) throw new Error(`readInstructRecords: ${path}: expected a JSON array of records, got ${describeJson(value)}`);
    value.forEach((v, i) => records.push(parseRecord(v, `${path}: record ${i + 1}`)));
  }
  if (records.length === 0) throw new Error(`readInstructRecords: ${path}: no records (the file is empty)`);
  return records;
}

/** The first non-blank line of a file, read in chunks (null when there is none). */
function firstNonBlankLine(path: string): string | null {
  const fd = openSync(path, 'r');
  try {
    const chunk = Buffer.alloc(1 << 16);
    const parts: Buffer[] = [];
    for (;;) {
      const n = readSync(fd, chunk, 0, chunk.length, null);
      if (n > 0) parts.push(Buffer.from(chunk.subarray(0, n)));
      let text = Buffer.concat(parts).toString('utf8');
      if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
      const lines = text.split('\n');
      // every line but the last is complete (the last is too at end of file)
      const complete = n > 0 ? lines.slice(0, -1) : lines;
      const found = complete.find((l) => !/^\s*$/.test(l));
      if (found !== undefined) return found;
      if (n === 0) return null;
    }
  } finally {
    closeSync(fd);
  }
}

/**
 * 'instruct' for .json files and for .jsonl files whose first record has instruction/output or
 * messages; 'text' otherwise (the text corpus reader then reports what is wrong with the file).
 */
export function detectDataFormat(path: string): 'text' | 'instruct' {
  if (!existsSync(path)) throw new Error(`detectDataFormat: ${path}: file not found`);
  const ext = extname(path).toLowerCase();
  if (ext === '.json') return 'instruct';
  if (ext !== '.jsonl') return 'text';
  const line = firstNonBlankLine(path);
  if (line === null) return 'text';
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch {
    return 'text';
  }
  if (isJsonObject(value) && ('messages' in value || 'instruction' in value || 'output' in value)) return 'instruct';
  return 'text';
}

// ---------------------------------------------------------------------------------------------
// Chat templates

function specialTokenString(cfg: Record<string, unknown>, key: string, file: string): string | null {
  const v = cfg[key];
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') return v;
  if (isJsonObject(v) && typeof v['content'] === 'string') return v['content'];
  throw new CheckpointError(file, `'${key}' must be a string or {content: string}, got ${describeJson(v)}`);
}

function readJsonObject(path: string, what: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new CheckpointError(path, `${what} is not valid JSON (${(e as Error).message})`);
  }
  if (!isJsonObject(v)) throw new CheckpointError(path, `${what} must be a JSON object, got ${describeJson(v)}`);
  return v;
}

/** A chat_template value: a string, or a list of {name, template} of which 'default' is taken. */
function templateFromValue(v: unknown, file: string): string {
  if (typeof v === 'string') return v;
  if (Array.isArray(v)) {
    const names: string[] = [];
    for (const t of v) {
      if (!isJsonObject(t) || typeof t['name'] !== 'string' || typeof t['template'] !== 'string') {
        throw new CheckpointError(file, `'chat_template' list entries must be {name: string, template: string}, got ${describeJson(t)}`);
      }
      if (t['name'] === 'default') return t['template'];
      names.push(t['name']);
    }
    throw new CheckpointError(file, `'chat_template' has no template named 'default' (names: ${names.join(', ') || 'none'})`);
  }
  throw new CheckpointError(file, `'chat_template' must be a string or a list of {name, template}, got ${describeJson(v)}`);
}

/**
 * The model's chat template: chat_template.jinja in modelDir (it takes precedence, as in
 * transformers), else tokenizer_config.json's chat_template (a string, or a list of
 * {name, template} → 'default'), else chat_template.json's; null when the model has none.
 * bos/eos token strings come from tokenizer_config.json. Throws when the template does not parse.
 */
export function loadChatTemplate(modelDir: string): ChatTemplate | null {
  if (!existsSync(modelDir)) throw new CheckpointError(modelDir, 'checkpoint directory does not exist');
  const cfgFile = join(modelDir, 'tokenizer_config.json');
  const cfg = existsSync(cfgFile) ? readJsonObject(cfgFile, 'tokenizer_config.json') : {};
  let source: string | null = null;
  let file = '';
  const jinjaFile = join(modelDir, 'chat_template.jinja');
  const jsonFile = join(modelDir, 'chat_template.json');
  if (existsSync(jinjaFile)) {
    source = readFileSync(jinjaFile, 'utf8');
    file = jinjaFile;
  } else if (cfg['chat_template'] !== undefined && cfg['chat_template'] !== null) {
    source = templateFromValue(cfg['chat_template'], cfgFile);
    file = cfgFile;
  } else if (existsSync(jsonFile)) {
    const j = readJsonObject(jsonFile, 'chat_template.json');
    if (j['chat_template'] !== undefined && j['chat_template'] !== null) {
      source = templateFromValue(j['chat_template'], jsonFile);
      file = jsonFile;
    }
  }
  if (source === null) return null;
  const tpl: ChatTemplate = {
    source,
    bosToken: specialTokenString(cfg, 'bos_token', cfgFile),
    eosToken: specialTokenString(cfg, 'eos_token', cfgFile),
    file,
  };
  compileTemplate(tpl);
  return tpl;
}

function compileTemplate(tpl: ChatTemplate): Template {
  try {
    return new Template(tpl.source);
  } catch (e) {
    throw new CheckpointError(tpl.file, `the chat template does not parse (${(e as Error).message})`);
  }
}

// ---------------------------------------------------------------------------------------------
// Layout and tokenization

/** A piece of a sample: text encoded together with its neighbours, or a single special id. */
type Piece = { text: string; supervised: boolean } | { id: number; supervised: boolean };

/** Text run with its supervised character spans [start, end). */
interface Run {
  text: string;
  spans: [number, number][];
}

/** Alpaca record as chat messages (for chat templates). */
function alpacaMessages(r: Extract<InstructRecord, { kind: 'alpaca' }>): ChatMessage[] {
  const user = r.input.trim() === '' ? r.instruction : `${r.instruction}\n\n${r.input}`;
  return [
    { role: 'user', content: user },
    { role: 'assistant', content: r.output },
  ];
}

/** Pieces of a record under the plain template (bos, prompt + response text, eos per response). */
function plainPieces(r: InstructRecord, bosId: number | null, eosId: number): Piece[] {
  const pieces: Piece[] = [];
  if (bosId !== null) pieces.push({ id: bosId, supervised: false });
  if (r.kind === 'alpaca') {
    let prompt = `### Instruction:\n${r.instruction}\n\n`;
    if (r.input.trim() !== '') prompt += `### Input:\n${r.input}\n\n`;
    prompt += '### Response:\n';
    pieces.push({ text: prompt, supervised: false }, { text: r.output, supervised: true }, { id: eosId, supervised: true });
    return pieces;
  }
  for (const m of r.messages) {
    if (m.role === 'system') pieces.push({ text: `### System:\n${m.content}\n\n`, supervised: false });
    else if (m.role === 'user') pieces.push({ text: `### Instruction:\n${m.content}\n\n### Response:\n`, supervised: false });
    else pieces.push({ text: m.content, supervised: true }, { id: eosId, supervised: true });
  }
  return pieces;
}

/** The rendered conversation and each assistant turn's span in it. */
function templateRun(tpl: Template, chat: ChatTemplate, messages: ChatMessage[], where: string): Run {
  const render = (msgs: ChatMessage[], generationPrompt: boolean): string => {
    const ctx: Record<string, unknown> = { messages: msgs, add_generation_prompt: generationPrompt };
    if (chat.bosToken !== null) ctx['bos_token'] = chat.bosToken;
    if (chat.eosToken !== null) ctx['eos_token'] = chat.eosToken;
    try {
      return tpl.render(ctx);
    } catch (e) {
      throw new Error(`buildSupervisedSamples: ${where}: the chat template from ${chat.file} failed (${(e as Error).message})`);
    }
  };
  const text = render(messages, false);
  const spans: [number, number][] = [];
  for (let i = 0; i < messages.length; i++) {
    if (messages[i]!.role !== 'assistant') continue;
    const prompt = render(messages.slice(0, i), true);
    const through = render(messages.slice(0, i + 1), false);
    if (!text.startsWith(prompt) || !through.startsWith(prompt) || !text.startsWith(through)) {
      throw new Error(
        `buildSupervisedSamples: ${where}: cannot locate assistant message ${i}: the chat template from ${chat.file} does not render ` +
          'the conversation up to it as a prefix of the whole conversation (it rewrites earlier turns)',
      );
    }
    if (through.length > prompt.length) spans.push([prompt.length, through.length]);
  }
  return { text, spans };
}

function commonPrefixLength(a: number[], b: number[]): number {
  const n = Math.min(a.length, b.length);
  let i = 0;
  while (i < n && a[i] === b[i]) i++;
  return i;
}

/** Encodes a text run in one piece and marks the tokens of its supervised spans. */
function encodeRun(tok: TokenizerLike, run: Run, ids: number[], mask: boolean[]): void {
  const full = tok.encode(run.text, { addSpecialTokens: false });
  const cache = new Map<number, number>();
  const tokenAt = (c: number): number => {
    if (c <= 0) return 0;
    if (c >= run.text.length) return full.length;
    let k = cache.get(c);
    if (k === undefined) {
      k = commonPrefixLength(full, tok.encode(run.text.slice(0, c), { addSpecialTokens: false }));
      cache.set(c, k);
    }
    return k;
  };
  const runMask = new Array<boolean>(full.length).fill(false);
  for (const [s, e] of run.spans) {
    const a = tokenAt(s);
    const b = tokenAt(e);
    for (let t = a; t < b; t++) runMask[t] = true;
  }
  for (let t = 0; t < full.length; t++) {
    ids.push(full[t]!);
    mask.push(runMask[t]!);
  }
}

/** Token ids and per-token "belongs to a response" flags of one record. */
function tokenizeRecord(
  r: InstructRecord,
  tok: TokenizerLike,
  chat: { tpl: Template; meta: ChatTemplate } | null,
): { ids: number[]; mask: boolean[] } {
  const ids: number[] = [];
  const mask: boolean[] = [];
  if (chat) {
    const messages = r.kind === 'alpaca' ? alpacaMessages(r) : r.messages;
    encodeRun(tok, templateRun(chat.tpl, chat.meta, messages, r.where), ids, mask);
    return { ids, mask };
  }
  const pieces = plainPieces(r, tok.bosId, tok.eosIds[0]!);
  let run: Run = { text: '', spans: [] };
  const flush = (): void => {
    if (run.text.length > 0) encodeRun(tok, run, ids, mask);
    run = { text: '', spans: [] };
  };
  for (const p of pieces) {
    if ('id' in p) {
      flush();
      ids.push(p.id);
      mask.push(p.supervised);
    } else {
      if (p.supervised) run.spans.push([run.text.length, run.text.length + p.text.length]);
      run.text += p.text;
    }
  }
  flush();
  return { ids, mask };
}

/** The fixed-length sample of a tokenized record; null when no target lies inside seqlen. */
function toSample(ids: number[], mask: boolean[], seqlen: number, padId: number, record: number): SupervisedSample | null {
  const length = Math.min(ids.length, seqlen);
  const out = new Int32Array(seqlen).fill(padId);
  const labels = new Int32Array(seqlen).fill(IGNORE_INDEX);
  let targets = 0;
  for (let t = 0; t < length; t++) out[t] = ids[t]!;
  for (let t = 0; t + 1 < length; t++) {
    if (mask[t + 1]) {
      labels[t] = ids[t + 1]!;
      targets++;
    }
  }
  return targets > 0 ? { ids: out, labels, length, record } : null;
}

/**
 * `count` supervised samples of exactly opts.seqlen tokens. Records are taken in a seeded
 * random order; when count exceeds the usable records the order is reshuffled and they cycle
 * (each record once per pass). Records with no response token within seqlen are skipped; it is
 * an error when none is usable. chatTemplate null selects the plain template (which needs an
 * eos id); a bare template string is rendered without bos_token/eos_token, and it is an error
 * for such a template to use them. Samples are shared between passes (the same object may
 * appear more than once): treat them as read-only.
 */
export function buildSupervisedSamples(
  records: InstructRecord[],
  tok: TokenizerLike,
  chatTemplate: ChatTemplate | string | null,
  opts: { seqlen: number; count: number; seed: number },
): SupervisedSample[] {
  const { seqlen, count, seed } = opts;
  if (!Number.isInteger(seqlen) || seqlen < 2) throw new RangeError(`buildSupervisedSamples: seqlen must be an integer >= 2, got ${seqlen}`);
  if (!Number.isInteger(count) || count < 0) throw new RangeError(`buildSupervisedSamples: count must be a non-negative integer, got ${count}`);
  if (!Array.isArray(records) || records.length === 0) throw new RangeError('buildSupervisedSamples: records must be a non-empty array');
  let chat: { tpl: Template; meta: ChatTemplate } | null = null;
  if (chatTemplate !== null) {
    const bare = typeof chatTemplate === 'string';
    const meta: ChatTemplate = bare ? { source: chatTemplate, bosToken: null, eosToken: null, file: 'a string' } : chatTemplate;
    // A ChatTemplate's null token means the model has none (rendered as undefined, as transformers
    // does); a bare string has no token strings at all, so a template that uses them is refused.
    for (const name of ['bos_token', 'eos_token']) {
      if (bare && new RegExp(`\\b${name}\\b`).test(meta.source)) {
        throw new Error(`buildSupervisedSamples: a chat template given as a string uses ${name} but its string is unknown (load the template with loadChatTemplate)`);
      }
    }
    chat = { tpl: compileTemplate(meta), meta };
  } else if (tok.eosIds.length === 0) {
    throw new Error('buildSupervisedSamples: the tokenizer has no eos token; the plain template needs one to end each response');
  }
  const padId = tok.eosIds[0] ?? 0;

  const built = new Map<number, SupervisedSample | null>();
  const sampleOf = (i: number): SupervisedSample | null => {
    let s = built.get(i);
    if (s === undefined) {
      const { ids, mask } = tokenizeRecord(records[i]!, tok, chat);
      s = toSample(ids, mask, seqlen, padId, i);
      built.set(i, s);
    }
    return s;
  };

  const rng = new Rng(seed);
  const out: SupervisedSample[] = [];
  while (out.length < count) {
    const order = rng.shuffle(records.map((_, i) => i));
    let usable = 0;
    for (const i of order) {
      if (out.length === count) break;
      const s = sampleOf(i);
      if (s === null) continue;
      usable++;
      out.push(s);
    }
    if (usable === 0) {
      throw new Error(
        `buildSupervisedSamples: none of the ${records.length} records has a response token within the first ${seqlen} tokens (prompts too long for seqlen?)`,
      );
    }
  }
  return out;
}
