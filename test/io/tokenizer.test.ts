// Tokenizer: reproduces the PyTorch-side golden tokenizations of the bundled llama-tiny
// checkpoint exactly (with and without special tokens), decodes back to the text, resolves
// bos/eos from tokenizer_config / generation_config / config, and reports missing or broken
// files clearly. When the shared test corpus is present, the token count of test-mix.txt is
// checked against the golden count too (skipped otherwise).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../../src/engine/native.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';

const FIXTURE = join(packageRoot(), 'fixtures', 'llama-tiny');
const golden = JSON.parse(readFileSync(join(FIXTURE, 'golden.json'), 'utf8')) as {
  tokenize: { text: string; ids_no_special: number[]; ids_with_special: number[] }[];
  test_mix_token_count: number;
};

/** A temp checkpoint dir with the fixture's tokenizer.json and the given extra files. */
function withTokDir(files: Record<string, unknown>, fn: (dir: string) => void, copyTokenizer = true): void {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-tok-'));
  try {
    if (copyTokenizer) copyFileSync(join(FIXTURE, 'tokenizer.json'), join(dir, 'tokenizer.json'));
    for (const [name, v] of Object.entries(files)) writeFileSync(join(dir, name), typeof v === 'string' ? v : JSON.stringify(v));
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('golden: encode with and without special tokens matches the reference ids exactly', () => {
  const tok = loadTokenizer(FIXTURE);
  assert.ok(golden.tokenize.length >= 6);
  for (const g of golden.tokenize) {
    assert.deepEqual(tok.encode(g.text, { addSpecialTokens: false }), g.ids_no_special, JSON.stringify(g.text));
    assert.deepEqual(tok.encode(g.text, { addSpecialTokens: true }), g.ids_with_special, JSON.stringify(g.text));
    assert.deepEqual(tok.encode(g.text), g.ids_with_special, `default adds special tokens: ${JSON.stringify(g.text)}`);
  }
});

test('decode: inverts encode; skipSpecialTokens drops bos and other special tokens', () => {
  const tok = loadTokenizer(FIXTURE);
  for (const g of golden.tokenize) {
    assert.equal(tok.decode(g.ids_no_special), g.text, JSON.stringify(g.text));
    if (!g.text.includes('<unk>')) assert.equal(tok.decode(g.ids_with_special, { skipSpecialTokens: true }), g.text);
  }
  const hello = golden.tokenize[0]!;
  assert.equal(hello.text, 'Hello, world!');
  assert.equal(tok.decode([0, ...hello.ids_no_special, 1]), '<s>Hello, world!</s>');
  assert.equal(tok.decode([0, ...hello.ids_no_special, 1], { skipSpecialTokens: true }), 'Hello, world!');
  assert.equal(tok.decode([]), '');
  assert.throws(() => tok.decode([42, 4096]), /decode: ids\[1\] = 4096 is not a token id \(vocabulary size 4096\)/);
  assert.throws(() => tok.decode([-1]), /decode: ids\[0\] = -1/);
  assert.throws(() => tok.decode([1.5]), /decode: ids\[0\] = 1\.5/);
});

test('special ids and vocabulary size of the fixture', () => {
  const tok = loadTokenizer(FIXTURE);
  assert.equal(tok.bosId, 0);
  assert.deepEqual(tok.eosIds, [1]);
  assert.equal(tok.vocabSize, 4096);
});

test('bos/eos: {content} tokens, generation_config lists, fallbacks to generation_config and config', () => {
  withTokDir({ 'tokenizer_config.json': { bos_token: { content: '<s>', lstrip: false }, eos_token: { content: '</s>' } } }, (dir) => {
    const tok = loadTokenizer(dir);
    assert.equal(tok.bosId, 0);
    assert.deepEqual(tok.eosIds, [1]);
  });
  // eos from tokenizer_config first, then every generation_config eos id.
  withTokDir({ 'tokenizer_config.json': { eos_token: '</s>' }, 'generation_config.json': { bos_token_id: 2, eos_token_id: [2, 1, 3] } }, (dir) => {
    const tok = loadTokenizer(dir);
    assert.equal(tok.bosId, 2);
    assert.deepEqual(tok.eosIds, [1, 2, 3]);
  });
  // No tokenizer_config: generation_config, then config.json.
  withTokDir({ 'config.json': { bos_token_id: 5, eos_token_id: 6 } }, (dir) => {
    const tok = loadTokenizer(dir);
    assert.equal(tok.bosId, 5);
    assert.deepEqual(tok.eosIds, [6]);
  });
  withTokDir({ 'config.json': { bos_token_id: 5, eos_token_id: 6 }, 'generation_config.json': { eos_token_id: [7, 8] } }, (dir) => {
    const tok = loadTokenizer(dir);
    assert.equal(tok.bosId, 5);
    assert.deepEqual(tok.eosIds, [7, 8]);
  });
  withTokDir({}, (dir) => {
    const tok = loadTokenizer(dir);
    assert.equal(tok.bosId, null);
    assert.deepEqual(tok.eosIds, []);
    // The post-processor still adds <s>: that comes from tokenizer.json itself.
    assert.deepEqual(tok.encode('Hello, world!'), golden.tokenize[0]!.ids_with_special);
  });
});

test('errors: missing tokenizer.json, sentencepiece-only directory, missing directory', () => {
  withTokDir(
    { 'config.json': {} },
    (dir) => {
      assert.throws(
        () => loadTokenizer(dir),
        (e: Error) => e.message.startsWith(dir) && /no tokenizer\.json in this directory/.test(e.message),
      );
      writeFileSync(join(dir, 'tokenizer.model'), 'spm');
      assert.throws(() => loadTokenizer(dir), /only a sentencepiece tokenizer\.model is present/);
      assert.throws(() => loadTokenizer(join(dir, 'nope')), /nope: checkpoint directory does not exist/);
    },
    false,
  );
});

test('errors: unparsable or unusable tokenizer.json and tokenizer_config.json', () => {
  withTokDir({ 'tokenizer.json': '{"version": "1.0", "model": {' }, (dir) => {
    assert.throws(
      () => loadTokenizer(dir),
      (e: Error) => e.message.startsWith(join(dir, 'tokenizer.json')) && /tokenizer\.json is not valid JSON/.test(e.message),
    );
  });
  withTokDir({ 'tokenizer.json': '[]' }, (dir) => {
    assert.throws(() => loadTokenizer(dir), /tokenizer\.json must be a JSON object, got an array/);
  });
  withTokDir({ 'tokenizer.json': { version: '1.0' } }, (dir) => {
    assert.throws(() => loadTokenizer(dir), /tokenizer\.json has no 'model' object/);
  });
  withTokDir({ 'tokenizer.json': { version: '1.0', added_tokens: [], model: { type: 'NoSuchModel' } } }, (dir) => {
    assert.throws(() => loadTokenizer(dir), (e: Error) => e.message.startsWith(join(dir, 'tokenizer.json')) && /cannot build the tokenizer/.test(e.message));
  });
  withTokDir({ 'tokenizer_config.json': '{bad' }, (dir) => {
    assert.throws(() => loadTokenizer(dir), (e: Error) => e.message.startsWith(join(dir, 'tokenizer_config.json')) && /not valid JSON/.test(e.message));
  });
  withTokDir({ 'tokenizer_config.json': { bos_token: '<bos>' } }, (dir) => {
    assert.throws(() => loadTokenizer(dir), /bos_token "<bos>" is not in the vocabulary/);
  });
  withTokDir({ 'tokenizer_config.json': { bos_token: 3 } }, (dir) => {
    assert.throws(() => loadTokenizer(dir), /'bos_token' must be a string or \{content: string\}/);
  });
  withTokDir({ 'generation_config.json': { eos_token_id: 'x' } }, (dir) => {
    assert.throws(() => loadTokenizer(dir), (e: Error) => e.message.startsWith(join(dir, 'generation_config.json')) && /'eos_token_id' must be a token id/.test(e.message));
  });
});

const TEST_MIX = '/work/shared/data/test-mix.txt';
test('shared corpus: test-mix.txt token count matches the golden count', { skip: !existsSync(TEST_MIX) && 'shared corpus not present' }, () => {
  const tok = loadTokenizer(FIXTURE);
  const ids = tok.encode(readFileSync(TEST_MIX, 'utf8'), { addSpecialTokens: false });
  assert.equal(ids.length, golden.test_mix_token_count);
});
