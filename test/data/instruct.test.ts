// Instruction data for E2E-QP: reading Alpaca and chat records (and every bad-input error),
// format detection, chat-template loading, and supervised samples — the loss mask covers
// exactly the response tokens and their eos / end-of-turn marker, labels are shifted by one,
// truncation and padding give exactly seqlen tokens — with a character-level toy tokenizer
// (exact expectations), a word tokenizer that merges across the prompt/response boundary, and
// the bundled llama-tiny byte-level BPE tokenizer.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  buildSupervisedSamples,
  detectDataFormat,
  IGNORE_INDEX,
  loadChatTemplate,
  readInstructRecords,
  type ChatTemplate,
  type InstructRecord,
  type SupervisedSample,
  type TokenizerLike,
} from '../../src/data/instruct.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { TINY } from '../golden.js';

const dir = mkdtempSync(join(tmpdir(), 'eqat-instruct-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
let counter = 0;
function put(name: string, content: string): string {
  const p = join(dir, `${counter++}-${name}`);
  writeFileSync(p, content);
  return p;
}
const jsonl = (...recs: unknown[]): string => recs.map((r) => JSON.stringify(r)).join('\n') + '\n';

/** Character-level tokenizer: special strings are single ids, every other character is 100 + code. */
class CharTokenizer implements TokenizerLike {
  static readonly SPECIALS = ['<s>', '</s>', '<|im_start|>', '<|im_end|>'];
  readonly bosId: number | null;
  readonly eosIds: number[];
  constructor(opts: { bos?: number | null; eos?: number[] } = {}) {
    this.bosId = opts.bos === undefined ? 1 : opts.bos;
    this.eosIds = opts.eos ?? [2];
  }
  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    const ids: number[] = [];
    if ((opts.addSpecialTokens ?? true) && this.bosId !== null) ids.push(this.bosId);
    let i = 0;
    outer: while (i < text.length) {
      for (let s = 0; s < CharTokenizer.SPECIALS.length; s++) {
        const sp = CharTokenizer.SPECIALS[s]!;
        if (text.startsWith(sp, i)) {
          ids.push(s + 1);
          i += sp.length;
          continue outer;
        }
      }
      ids.push(100 + text.charCodeAt(i));
      i++;
    }
    return ids;
  }
  decode(ids: ArrayLike<number>): string {
    let s = '';
    for (const id of Array.from(ids)) s += id >= 100 ? String.fromCharCode(id - 100) : CharTokenizer.SPECIALS[id - 1]!;
    return s;
  }
}

/** Word tokenizer that attaches leading spaces to the next word (" Paris" is one token), ids by first appearance. */
class WordTokenizer implements TokenizerLike {
  readonly bosId = 0;
  readonly eosIds = [1];
  readonly vocab = new Map<string, number>([
    ['<s>', 0],
    ['</s>', 1],
  ]);
  readonly words: string[] = ['<s>', '</s>'];
  encode(text: string): number[] {
    const pieces = text.match(/ *[^ ]+| +$/g) ?? [];
    return pieces.map((p) => {
      let id = this.vocab.get(p);
      if (id === undefined) {
        id = this.words.length;
        this.vocab.set(p, id);
        this.words.push(p);
      }
      return id;
    });
  }
  decode(ids: ArrayLike<number>): string {
    return Array.from(ids, (id) => this.words[id]!).join('');
  }
}

const alpaca = (instruction: string, output: string, input = ''): InstructRecord => ({ kind: 'alpaca', instruction, input, output, where: 'mem' });
const chat = (...turns: [string, string][]): InstructRecord => ({
  kind: 'chat',
  messages: turns.map(([role, content]) => ({ role: role as 'system' | 'user' | 'assistant', content })),
  where: 'mem',
});

/** The structural invariants of every sample: exactly seqlen, shifted labels, -100 on padding and the last real position. */
function checkShape(s: SupervisedSample, seqlen: number, padId: number): void {
  assert.equal(s.ids.length, seqlen);
  assert.equal(s.labels.length, seqlen);
  assert.ok(s.length >= 1 && s.length <= seqlen);
  for (let t = 0; t < seqlen; t++) {
    if (t >= s.length) assert.equal(s.ids[t], padId, `padding id at ${t}`);
    if (t >= s.length - 1) assert.equal(s.labels[t], IGNORE_INDEX, `no target at ${t}`);
    else if (s.labels[t] !== IGNORE_INDEX) assert.equal(s.labels[t], s.ids[t + 1], `label ${t} is the next id`);
  }
}

/** Text of the supervised targets, in order, as one string (target of position t is token t+1). */
function targetText(s: SupervisedSample, decode: (ids: number[]) => string): string {
  return decode(Array.from(s.labels).filter((x) => x !== IGNORE_INDEX));
}

/** Indices t+1 of tokens that are targets. */
function targetPositions(s: SupervisedSample): number[] {
  const out: number[] = [];
  s.labels.forEach((x, t) => {
    if (x !== IGNORE_INDEX) out.push(t + 1);
  });
  return out;
}

const one = (r: InstructRecord, tok: TokenizerLike, tpl: ChatTemplate | string | null, seqlen: number): SupervisedSample =>
  buildSupervisedSamples([r], tok, tpl, { seqlen, count: 1, seed: 0 })[0]!;

test('plain template, Alpaca: bos + prompt + response + eos; loss exactly on the response and eos, shifted by one', () => {
  const tok = new CharTokenizer();
  const r = alpaca('Name the capital of France.', 'Paris.', 'Europe');
  const prompt = '### Instruction:\nName the capital of France.\n\n### Input:\nEurope\n\n### Response:\n';
  const s = one(r, tok, null, 128);
  const expectedIds = [1, ...tok.encode(prompt + 'Paris.', { addSpecialTokens: false }), 2];
  assert.equal(s.length, expectedIds.length);
  assert.deepEqual(Array.from(s.ids.subarray(0, s.length)), expectedIds);
  checkShape(s, 128, 2);
  // targets are the tokens at 1 + prompt length ... end: "Paris." then eos
  const first = 1 + prompt.length;
  assert.deepEqual(targetPositions(s), Array.from({ length: 7 }, (_, k) => first + k));
  assert.equal(s.labels[first - 1], 100 + 'P'.charCodeAt(0), 'the last prompt position predicts the first response token');
  assert.equal(s.labels[s.length - 2], 2, 'the last response position predicts eos');
  assert.equal(targetText(s, (ids) => tok.decode(ids)), 'Paris.</s>');
  // without input there is no Input section
  const s2 = one(alpaca('Say hi.', 'hi'), tok, null, 64);
  assert.equal(tok.decode(s2.ids.subarray(0, s2.length)), '<s>### Instruction:\nSay hi.\n\n### Response:\nhi</s>');
  // empty output: only eos is learnt
  const s3 = one(alpaca('Say nothing.', ''), tok, null, 64);
  assert.equal(targetText(s3, (ids) => tok.decode(ids)), '</s>');
  // no bos id: nothing is prepended
  const s4 = one(alpaca('Say hi.', 'hi'), new CharTokenizer({ bos: null }), null, 64);
  assert.equal(tok.decode(s4.ids.subarray(0, s4.length)), '### Instruction:\nSay hi.\n\n### Response:\nhi</s>');
});

test('plain template, multi-turn chat: loss on every assistant turn and its eos only', () => {
  const tok = new CharTokenizer();
  const r = chat(['system', 'Be brief.'], ['user', 'Hi'], ['assistant', 'Hello'], ['user', 'Bye'], ['assistant', 'Ciao'], ['user', 'trailing']);
  const s = one(r, tok, null, 256);
  checkShape(s, 256, 2);
  assert.equal(
    tok.decode(s.ids.subarray(0, s.length)),
    '<s>### System:\nBe brief.\n\n### Instruction:\nHi\n\n### Response:\nHello</s>### Instruction:\nBye\n\n### Response:\nCiao</s>' +
      '### Instruction:\ntrailing\n\n### Response:\n',
  );
  assert.equal(targetText(s, (ids) => tok.decode(ids)), 'Hello</s>Ciao</s>');
  const text = tok.decode(s.ids.subarray(0, s.length));
  const h = text.indexOf('Hello') - 2; // "<s>" is one token: char offset 3 → token 1, so token index = char index - 2
  const c = text.indexOf('Ciao') - 2 - 3; // "</s>" after Hello is also one token (4 chars → 1)
  assert.deepEqual(targetPositions(s), [...[0, 1, 2, 3, 4, 5].map((k) => h + k), ...[0, 1, 2, 3, 4].map((k) => c + k)]);
});

const CHATML =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

test('chat template (ChatML): multi-turn, loss on each assistant reply and its end-of-turn marker only', () => {
  const tok = new CharTokenizer();
  const r = chat(['system', 'Be brief.'], ['user', 'Hi'], ['assistant', 'Hello!'], ['user', 'Bye'], ['assistant', 'Ciao']);
  const s = one(r, tok, CHATML, 200);
  checkShape(s, 200, 2);
  const text =
    '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\nHello!<|im_end|>\n' +
    '<|im_start|>user\nBye<|im_end|>\n<|im_start|>assistant\nCiao<|im_end|>\n';
  assert.equal(tok.decode(s.ids.subarray(0, s.length)), text, 'no bos added: the template decides');
  assert.equal(targetText(s, (ids) => tok.decode(ids)), 'Hello!<|im_end|>\nCiao<|im_end|>\n');
  // the target positions are exactly the tokens of the two replies (with their markers)
  const expected: number[] = [];
  for (const reply of ['Hello!<|im_end|>\n', 'Ciao<|im_end|>\n']) {
    const start = tok.encode(text.slice(0, text.indexOf(reply)), { addSpecialTokens: false }).length;
    const n = tok.encode(reply, { addSpecialTokens: false }).length;
    for (let k = 0; k < n; k++) expected.push(start + k);
  }
  assert.deepEqual(targetPositions(s), expected);
});

const LLAMA3 =
  '{{- bos_token }}{%- for message in messages %}' +
  "{{- '<|start_header_id|>' + message.role + '<|end_header_id|>\\n\\n' + message.content | trim + '<|eot_id|>' }}" +
  "{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}";

test('chat template (Llama-3 style) with bos/eos strings; Alpaca records become user/assistant turns', () => {
  const tok = new CharTokenizer();
  const tpl: ChatTemplate = { source: LLAMA3, bosToken: '<s>', eosToken: '</s>', file: 'test' };
  const s = one(alpaca('Translate', ' Bonjour ', 'Hello'), tok, tpl, 200);
  checkShape(s, 200, 2);
  const text = tok.decode(s.ids.subarray(0, s.length));
  assert.equal(
    text,
    '<s><|start_header_id|>user<|end_header_id|>\n\nTranslate\n\nHello<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\nBonjour<|eot_id|>',
  );
  assert.equal(targetText(s, (ids) => tok.decode(ids)), 'Bonjour<|eot_id|>');
  // a model without a bos token: bos_token renders as nothing (as transformers leaves it undefined)
  const noBos = one(alpaca('Translate', 'Bonjour'), tok, { ...tpl, bosToken: null }, 200);
  assert.ok(tok.decode(noBos.ids.subarray(0, noBos.length)).startsWith('<|start_header_id|>user'));
  // a bare template string that uses bos_token cannot be rendered: its string is unknown
  assert.throws(() => one(alpaca('a', 'b'), tok, LLAMA3, 64), /uses bos_token but its string is unknown/);
});

test('truncation keeps the first seqlen tokens; padding uses eos (or 0); records without targets are skipped', () => {
  const tok = new CharTokenizer();
  const r = alpaca('Q', 'ABCDEFGHIJ'); // prompt "### Instruction:\nQ\n\n### Response:\n" = 34 chars
  const full = one(r, tok, null, 100);
  assert.equal(full.length, 1 + 34 + 10 + 1);
  const cut = one(r, tok, null, 40);
  checkShape(cut, 40, 2);
  assert.equal(cut.length, 40);
  assert.deepEqual(Array.from(cut.ids), Array.from(full.ids.subarray(0, 40)));
  assert.equal(targetText(cut, (ids) => tok.decode(ids)), 'ABCDE', 'tokens 35..39 are targets (of positions 34..38); position 39 has none');
  // padding with eos, and with 0 when the tokenizer has no eos (chat template path)
  assert.deepEqual(Array.from(full.ids.subarray(full.length)), new Array(100 - full.length).fill(2));
  const noEos = new CharTokenizer({ eos: [] });
  const p0 = one(chat(['user', 'x'], ['assistant', 'y']), noEos, CHATML, 64);
  checkShape(p0, 64, 0);
  assert.equal(targetText(p0, (ids) => tok.decode(ids)), 'y<|im_end|>\n');
  // seqlen so short that the prompt fills it: no target, so the record is skipped
  const rs = [alpaca('a very long instruction that fills the window', 'x'), alpaca('b', 'y')];
  const got = buildSupervisedSamples(rs, tok, null, { seqlen: 40, count: 3, seed: 1 });
  assert.deepEqual(got.map((s) => s.record), [1, 1, 1]);
  assert.throws(
    () => buildSupervisedSamples([rs[0]!], tok, null, { seqlen: 40, count: 1, seed: 1 }),
    /none of the 1 records has a response token within the first 40 tokens/,
  );
});

test('seeded selection: a permutation per pass, cycling when count exceeds the records', () => {
  const tok = new CharTokenizer();
  const rs = Array.from({ length: 5 }, (_, i) => alpaca(`q${i}`, `a${i}`));
  const a = buildSupervisedSamples(rs, tok, null, { seqlen: 40, count: 12, seed: 3 });
  assert.equal(a.length, 12);
  const recs = a.map((s) => s.record);
  for (const pass of [recs.slice(0, 5), recs.slice(5, 10)]) assert.deepEqual([...pass].sort(), [0, 1, 2, 3, 4]);
  assert.equal(new Set(recs.slice(10)).size, 2);
  const again = buildSupervisedSamples(rs, tok, null, { seqlen: 40, count: 12, seed: 3 });
  assert.deepEqual(again.map((s) => s.record), recs, 'same seed, same order');
  const other = buildSupervisedSamples(rs, tok, null, { seqlen: 40, count: 12, seed: 4 });
  assert.notDeepEqual(other.map((s) => s.record), recs, 'another seed, another order');
  for (const s of a) assert.equal(targetText(s, (ids) => tok.decode(ids)), `a${s.record}</s>`);
  assert.deepEqual(buildSupervisedSamples(rs, tok, null, { seqlen: 40, count: 0, seed: 3 }), []);
  assert.throws(() => buildSupervisedSamples(rs, tok, null, { seqlen: 1, count: 1, seed: 0 }), /seqlen must be an integer >= 2/);
  assert.throws(() => buildSupervisedSamples([], tok, null, { seqlen: 8, count: 1, seed: 0 }), /records must be a non-empty array/);
  assert.throws(() => buildSupervisedSamples(rs, new CharTokenizer({ eos: [] }), null, { seqlen: 8, count: 1, seed: 0 }), /no eos token/);
});

test('a token that straddles the prompt/response boundary belongs to the response', () => {
  const tok = new WordTokenizer();
  // the template ends the prompt with a space; the tokenizer glues it to the first reply word
  const tpl = "{% for m in messages %}{% if m.role == 'user' %}{{ 'Q: ' + m.content + ' A:' }}{% else %}{{ ' ' + m.content + ' </s>' }}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ ' ' }}{% endif %}";
  const s = one(chat(['user', 'capital of France?'], ['assistant', 'Paris it is']), tok, tpl, 32);
  checkShape(s, 32, 1);
  assert.equal(tok.decode(Array.from(s.ids.subarray(0, s.length))), 'Q: capital of France? A: Paris it is </s>');
  assert.equal(targetText(s, (ids) => tok.decode(ids)), ' Paris it is </s>');
});

test('llama-tiny tokenizer: plain template and a Llama-2-style chat template', () => {
  const tok = loadTokenizer(TINY);
  const dec = (ids: number[]): string => tok.decode(ids);
  assert.equal(loadChatTemplate(TINY), null, 'llama-tiny has no chat template');
  const output = 'The capital of France is Paris.';
  const s = one(alpaca('What is the capital of France?', output), tok, null, 96);
  const eos = tok.eosIds[0]!;
  checkShape(s, 96, eos);
  const prompt = '### Instruction:\nWhat is the capital of France?\n\n### Response:\n';
  const ids = Array.from(s.ids.subarray(0, s.length));
  assert.deepEqual(ids, [tok.bosId!, ...tok.encode(prompt + output, { addSpecialTokens: false }), eos]);
  assert.equal(targetText(s, dec), 'The capital of France is Paris.</s>');
  const firstTarget = targetPositions(s)[0]!;
  assert.equal(firstTarget, 1 + tok.encode(prompt, { addSpecialTokens: false }).length);

  // Llama-2 style: bos/eos as strings in the template, encoded as special tokens
  const dirT = join(dir, 'tiny-chat');
  mkdirSync(dirT);
  writeFileSync(
    join(dirT, 'tokenizer_config.json'),
    JSON.stringify({
      bos_token: '<s>',
      eos_token: { content: '</s>' },
      chat_template:
        "{{ bos_token }}{% for m in messages %}{% if m.role == 'user' %}{{ '[INST] ' + m.content + ' [/INST]' }}{% elif m.role == 'assistant' %}{{ ' ' + m.content + eos_token }}{% endif %}{% endfor %}",
    }),
  );
  const tpl = loadChatTemplate(dirT)!;
  assert.equal(tpl.bosToken, '<s>');
  assert.equal(tpl.eosToken, '</s>');
  const c = one(chat(['user', 'Hello there'], ['assistant', 'Hi!'], ['user', 'And now?'], ['assistant', 'Goodbye.']), tok, tpl, 128);
  checkShape(c, 128, eos);
  const cids = Array.from(c.ids.subarray(0, c.length));
  assert.equal(cids[0], tok.bosId, 'bos from the template text');
  assert.equal(cids.filter((x) => x === eos).length, 2, 'eos from the template text, once per reply');
  assert.equal(dec(cids), '<s>[INST] Hello there [/INST] Hi!</s>[INST] And now? [/INST] Goodbye.</s>');
  assert.equal(targetText(c, dec), ' Hi!</s> Goodbye.</s>');
});

test('readInstructRecords: Alpaca and chat records, .jsonl and .json', async () => {
  const p = put(
    'mix.jsonl',
    '\uFEFF' +
      jsonl(
        { instruction: 'i1', input: 'x', output: 'o1', extra: 1 },
        { instruction: 'i2', output: 'o2' },
        { instruction: 'i3', input: null, output: '' },
      ) +
      '\n  \n' +
      jsonl({ messages: [{ role: 'system', content: 's' }, { role: 'user', content: 'u' }, { role: 'assistant', content: 'a' }] }),
  );
  const recs = await readInstructRecords(p);
  assert.deepEqual(recs, [
    { kind: 'alpaca', instruction: 'i1', input: 'x', output: 'o1', where: `${p}: line 1` },
    { kind: 'alpaca', instruction: 'i2', input: '', output: 'o2', where: `${p}: line 2` },
    { kind: 'alpaca', instruction: 'i3', input: '', output: '', where: `${p}: line 3` },
    {
      kind: 'chat',
      messages: [
        { role: 'system', content: 's' },
        { role: 'user', content: 'u' },
        { role: 'assistant', content: 'a' },
      ],
      where: `${p}: line 6`,
    },
  ]);
  const j = put('alpaca.json', JSON.stringify([{ instruction: 'a', input: '', output: 'b' }]));
  assert.deepEqual(await readInstructRecords(j), [{ kind: 'alpaca', instruction: 'a', input: '', output: 'b', where: `${j}: record 1` }]);
});

test('readInstructRecords: every bad input names the file and the line', async () => {
  const cases: [string, string, RegExp][] = [
    ['bad.jsonl', jsonl({ instruction: 'a', output: 'b' }) + '{oops\n', /line 2: invalid JSON/],
    ['arr.jsonl', '[1, 2]\n', /line 1: expected a JSON object, got an array/],
    ['neither.jsonl', jsonl({ text: 'plain' }), /line 1: neither an Alpaca record .* nor a chat record .*\(keys: text\)/],
    ['both.jsonl', jsonl({ instruction: 'a', output: 'b', messages: [] }), /line 1: has both "messages" and "instruction"/],
    ['instr.jsonl', jsonl({ instruction: 3, output: 'b' }), /line 1: "instruction" must be a string, got number 3/],
    ['noout.jsonl', jsonl({ instruction: 'a' }), /line 1: missing "output" field/],
    ['noinstr.jsonl', jsonl({ output: 'a' }), /line 1: missing "instruction" field/],
    ['input.jsonl', jsonl({ instruction: 'a', input: ['x'], output: 'b' }), /line 1: "input" must be a string \(or absent\), got an array/],
    ['msgs.jsonl', jsonl({ messages: 'hi' }), /line 1: "messages" must be an array, got the string "hi"/],
    ['empty-msgs.jsonl', jsonl({ messages: [] }), /line 1: "messages" is empty/],
    ['msg.jsonl', jsonl({ messages: ['hi'] }), /line 1: messages\[0\] must be an object \{role, content\}/],
    ['role.jsonl', jsonl({ messages: [{ role: 'bot', content: 'x' }] }), /line 1: messages\[0\]\.role must be one of system, user, assistant, got the string "bot"/],
    ['content.jsonl', jsonl({ messages: [{ role: 'user', content: null }] }), /line 1: messages\[0\]\.content must be a string, got null/],
    ['noassist.jsonl', jsonl({ messages: [{ role: 'user', content: 'x' }] }), /line 1: no assistant message: nothing to train on/],
    ['empty.jsonl', '\n  \n', /no records \(the file is empty\)/],
    ['obj.json', JSON.stringify({ instruction: 'a' }), /expected a JSON array of records, got an object/],
    ['rec.json', JSON.stringify([{ instruction: 'a', output: 'b' }, { output: 1 }]), /record 2: missing "instruction" field/],
    ['broken.json', '[{"a": 1},', /invalid JSON/],
    ['empty.json', '[]', /no records/],
    ['data.csv', 'a,b\n', /unsupported instruction data format \(extension "\.csv"\); supported: \.jsonl, \.json/],
  ];
  for (const [name, content, re] of cases) {
    const p = put(name, content);
    await assert.rejects(readInstructRecords(p), (e: Error) => {
      assert.match(e.message, re);
      assert.ok(e.message.startsWith(`readInstructRecords: ${p}`), e.message);
      return true;
    });
  }
  const missing = join(dir, 'missing.jsonl');
  await assert.rejects(readInstructRecords(missing), new RegExp(`${missing}: file not found`));
  const asDir = join(dir, 'adir.jsonl');
  mkdirSync(asDir);
  await assert.rejects(readInstructRecords(asDir), /not a regular file/);
});

test('detectDataFormat: by extension and the first record', () => {
  assert.equal(detectDataFormat(put('a.txt', 'instruction: no\n')), 'text');
  assert.equal(detectDataFormat(put('a.parquet', 'PAR1')), 'text');
  assert.equal(detectDataFormat(put('t.jsonl', jsonl({ text: 'doc' }, { instruction: 'a', output: 'b' }))), 'text');
  assert.equal(detectDataFormat(put('i.jsonl', '\n\n' + jsonl({ instruction: 'a', output: 'b' }))), 'instruct');
  assert.equal(detectDataFormat(put('m.jsonl', jsonl({ messages: [{ role: 'user', content: 'x' }] }))), 'instruct');
  assert.equal(detectDataFormat(put('a.json', '[]')), 'instruct');
  assert.equal(detectDataFormat(put('bad.jsonl', '{nope\n')), 'text');
  assert.equal(detectDataFormat(put('blank.jsonl', '\n \n')), 'text');
  // a first record longer than one read chunk
  const long = put('long.jsonl', jsonl({ instruction: 'x'.repeat(200_000), output: 'y' }));
  assert.equal(detectDataFormat(long), 'instruct');
  assert.throws(() => detectDataFormat(join(dir, 'none.jsonl')), /none\.jsonl: file not found/);
});

test('loadChatTemplate: string, named list, chat_template.jinja, none, and errors', () => {
  const mk = (name: string, files: Record<string, string>): string => {
    const d = join(dir, name);
    mkdirSync(d);
    for (const [f, c] of Object.entries(files)) writeFileSync(join(d, f), c);
    return d;
  };
  const s = loadChatTemplate(mk('str', { 'tokenizer_config.json': JSON.stringify({ chat_template: CHATML, eos_token: '</s>' }) }))!;
  assert.equal(s.source, CHATML);
  assert.equal(s.bosToken, null);
  assert.equal(s.eosToken, '</s>');
  assert.ok(s.file.endsWith('tokenizer_config.json'));
  const list = loadChatTemplate(
    mk('list', {
      'tokenizer_config.json': JSON.stringify({
        chat_template: [
          { name: 'tool_use', template: 'T' },
          { name: 'default', template: CHATML },
        ],
      }),
    }),
  )!;
  assert.equal(list.source, CHATML);
  const jin = loadChatTemplate(
    mk('jinja', { 'tokenizer_config.json': JSON.stringify({ chat_template: 'old', bos_token: { content: '<s>' } }), 'chat_template.jinja': LLAMA3 }),
  )!;
  assert.equal(jin.source, LLAMA3, 'chat_template.jinja wins');
  assert.equal(jin.bosToken, '<s>');
  assert.ok(jin.file.endsWith('chat_template.jinja'));
  assert.equal(loadChatTemplate(mk('none', { 'tokenizer_config.json': '{}' })), null);
  assert.equal(loadChatTemplate(mk('nofile', {})), null);
  assert.throws(
    () => loadChatTemplate(mk('nodefault', { 'tokenizer_config.json': JSON.stringify({ chat_template: [{ name: 'rag', template: 'x' }] }) })),
    /tokenizer_config\.json: 'chat_template' has no template named 'default' \(names: rag\)/,
  );
  assert.throws(() => loadChatTemplate(mk('num', { 'tokenizer_config.json': JSON.stringify({ chat_template: 3 }) })), /'chat_template' must be a string or a list/);
  assert.throws(() => loadChatTemplate(mk('syntax', { 'chat_template.jinja': '{% for %}' })), /chat_template\.jinja: the chat template does not parse/);
  assert.throws(() => loadChatTemplate(mk('badjson', { 'tokenizer_config.json': '{' })), /tokenizer_config\.json is not valid JSON/);
  assert.throws(() => loadChatTemplate(join(dir, 'no-such-model')), /checkpoint directory does not exist/);
});

test('chat template failures name the record', async () => {
  const tok = new CharTokenizer();
  const p = put('alt.jsonl', jsonl({ instruction: 'a', output: 'b' }, { messages: [{ role: 'assistant', content: 'x' }, { role: 'assistant', content: 'y' }] }));
  const recs = await readInstructRecords(p);
  const strict =
    "{% for m in messages %}{% if (m.role == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('roles must alternate user/assistant') }}{% endif %}" +
    "{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}";
  assert.throws(
    () => buildSupervisedSamples(recs, tok, strict, { seqlen: 64, count: 2, seed: 0 }),
    (e: Error) => e.message.includes(`${p}: line 2: the chat template from a string failed (roles must alternate user/assistant)`),
  );
  // a template that puts the newest message first cannot be split into turns
  const reversed = "{% for m in messages | reverse %}{{ m.role + ': ' + m.content + '\\n' }}{% endfor %}";
  assert.throws(
    () => one(chat(['user', 'q'], ['assistant', 'a'], ['user', 'q2'], ['assistant', 'a2']), tok, reversed, 64),
    /mem: cannot locate assistant message 1: the chat template .* does not render the conversation up to it as a prefix/,
  );
});
