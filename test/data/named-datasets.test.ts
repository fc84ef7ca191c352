// Datasets by name (src/data/named-datasets.ts) against a hub served on 127.0.0.1
// (test/io/fake-hub.ts) holding small files in each dataset's hub layout: Python's random
// reproduced (reference values printed by CPython 3), the C4 perplexity sample against draws
// computed by CPython with the official loop, WikiText2's joined test split, the calibration
// corpora of wikitext2 / c4 / redpajama, evaluatePerplexity and the quantize recipe taking
// names, a local file of the same name winning, and a name without a perplexity split.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { FakeHub, fakeSha } from '../io/fake-hub.js';
import { PyRandom } from '../../src/data/py-random.js';
import { C4_EVAL_WINDOWS, NAMED_DATASETS, c4EvalSample, isDatasetName, namedDataset, namedEvalWindows, readTextColumn, resolveCorpus, type NamedDataOptions } from '../../src/data/named-datasets.js';
import { readDocuments } from '../../src/data/documents.js';
import { evaluatePerplexity, perplexityWindows } from '../../src/pipeline/eval.js';
import { resolveRecipeInputs } from '../../src/pipeline/quantize.js';
import { validateRecipe, mergeRecipe } from '../../src/pipeline/recipe.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { REPO, TINY } from '../golden.js';

const work = mkdtempSync(join(tmpdir(), 'eqat-named-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));
let n = 0;
const fresh = (): NamedDataOptions => ({ cacheDir: join(work, `hub-${n}`), eqatCacheDir: join(work, `eqat-${n++}`), endpoint: hub.endpoint, token: null, offline: false, quiet: true });

const hub = new FakeHub();
const PARQUET = readFileSync(join(REPO, 'test', 'fixtures', 'docs-snappy.parquet'));
// rows of docs-snappy.parquet's text column (test/fixtures/make-parquet.mjs), null as ''
const PARQUET_ROWS = ['First document.\nIt has two lines.', 'Second: unicode café – 日本語 🙂', '   ', '', 'Fourth, after a whitespace-only row and a null row.', 'Fifth\r\nwith CRLF kept verbatim.'];
const evalText = readFileSync(join(REPO, 'fixtures', 'text', 'eval-sample.txt'), 'utf8');
const paragraphs = evalText.split(/\n\s*\n/).filter((p) => p.trim() !== '');
const jsonl = (docs: string[]) => Buffer.from(docs.map((text, i) => JSON.stringify({ text, timestamp: '2019-04-25T12:57:54Z', url: `https://example.com/${i}` })).join('\n') + '\n');
const C4_VAL = gzipSync(jsonl([...paragraphs, ...paragraphs.map((p) => p + ' ' + p)]));
const C4_TRAIN = gzipSync(jsonl(paragraphs.slice().reverse()));

hub.add({ type: 'dataset', id: 'Salesforce/wikitext', refs: { main: fakeSha('wikitext') }, commits: [{ sha: fakeSha('wikitext'), files: {
  'wikitext-2-raw-v1/test-00000-of-00001.parquet': PARQUET,
  'wikitext-2-raw-v1/train-00000-of-00001.parquet': PARQUET,
  'wikitext-103-raw-v1/test-00000-of-00001.parquet': Buffer.from('not this one'),
} }] });
hub.add({ type: 'dataset', id: 'allenai/c4', refs: { main: fakeSha('c4') }, commits: [{ sha: fakeSha('c4'), files: {
  'en/c4-validation.00000-of-00008.json.gz': C4_VAL,
  'en/c4-train.00000-of-01024.json.gz': C4_TRAIN,
  'en/c4-train.00001-of-01024.json.gz': Buffer.from('not this one'),
} }] });
const rpFiles: Record<string, Buffer> = {};
NAMED_DATASETS.redpajama.calib.files.forEach((f, i) => (rpFiles[f] = jsonl([`${f} document one.`, `${f} document two, number ${i}.`])));
hub.add({ type: 'dataset', id: 'togethercomputer/RedPajama-Data-1T-Sample', refs: { main: fakeSha('rp') }, commits: [{ sha: fakeSha('rp'), files: rpFiles }] });
const tinyFiles: Record<string, Buffer> = {};
for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors']) tinyFiles[f] = readFileSync(join(TINY, f));
hub.add({ type: 'model', id: 'test-org/llama-tiny', refs: { main: fakeSha('tiny') }, commits: [{ sha: fakeSha('tiny'), files: tinyFiles }] });

before(async () => {
  await hub.start();
});
after(async () => {
  await hub.stop();
});

test('PyRandom is CPython random, draw for draw', () => {
  // CPython 3: random.seed(0); random.random()
  assert.equal(new PyRandom(0).random(), 0.8444218515250481);
  // random.seed(0); [randint(0,100) x5], getrandbits(32), getrandbits(40), randint(0,45575), randint(0,2**40)
  const r = new PyRandom(0);
  assert.deepEqual([0, 1, 2, 3, 4].map(() => r.randint(0, 100)), [49, 97, 53, 5, 33]);
  assert.equal(r.getrandbits(32), 4146640122);
  assert.equal(r.getrandbits(40), 534771852898);
  assert.equal(r.randint(0, 45575), 26537);
  assert.equal(r.randint(0, 2 ** 40), 669284121952);
  // a seed above 2^32 (two key words): random.seed(12345678901234); [randint(0,7) x5]
  const big = new PyRandom(12345678901234);
  assert.deepEqual([0, 1, 2, 3, 4].map(() => big.randint(0, 7)), [0, 2, 6, 6, 7]);
  const c4 = new PyRandom(0);
  assert.deepEqual([0, 1, 2, 3, 4, 5, 6, 7].map(() => c4.randint(0, 45575)), [25247, 27562, 2653, 16968, 33506, 31845, 26537, 19877]);
  assert.throws(() => new PyRandom(0).randint(0, -1), /empty range/);
});

test('the C4 sample: the documents and offsets the official loop draws (computed by CPython)', () => {
  // docs i = 60 documents of (i * 7919) % 50 + 1 characters; a character-level encoder adding bos 1
  const docs = Array.from({ length: 60 }, (_, i) => String.fromCharCode(97 + (i % 26)).repeat(((i * 7919) % 50) + 1));
  const enc = { bosId: 1, encode: (t: string, o?: { addSpecialTokens?: boolean }) => [...(o?.addSpecialTokens === false ? [] : [1]), ...[...t].map((c) => c.charCodeAt(0) * 1000 + 0)] };
  // distinct ids per position: fold the position into the id so windows show their offset
  const encPos = { bosId: 1, encode: (t: string, o?: { addSpecialTokens?: boolean }) => enc.encode(t, o).map((id, k) => id + k) };
  const seqlen = 20;
  // python3: random.seed(0); for 10 windows: draw i until len(ids) >= 20; s = randint(0, len - 21)
  const expected: [number, number][] = [[54, 6], [26, 1], [31, 12], [30, 1], [57, 14], [13, 16], [18, 4], [39, 8], [34, 22], [51, 0]];
  const got = c4EvalSample(docs, encPos, seqlen, expected.length);
  expected.forEach(([i, s], w) => {
    const ids = encPos.encode(docs[i]!, { addSpecialTokens: true });
    assert.deepEqual([...got.subarray(w * seqlen, (w + 1) * seqlen)], ids.slice(s, s + seqlen), `window ${w}: doc ${i} at ${s}`);
  });
  assert.throws(() => c4EvalSample(['short'], enc, seqlen, 1, 'c4x'), /c4x: no document of at least 20 tokens/);
});

test('readTextColumn: every row of parquet (null as empty), jsonl and json.gz, in order', async () => {
  assert.deepEqual(await readTextColumn(join(REPO, 'test', 'fixtures', 'docs-snappy.parquet')), PARQUET_ROWS);
  const gz = join(work, 'x.json.gz');
  writeFileSync(gz, gzipSync(jsonl(['a', '', 'b'])));
  assert.deepEqual(await readTextColumn(gz), ['a', '', 'b']);
  writeFileSync(gz, Buffer.from('not gzip'));
  await assert.rejects(readTextColumn(gz), /x\.json\.gz: damaged gzip data|incorrect header/);
  await assert.rejects(readTextColumn(join(REPO, 'test', 'fixtures', 'no-text-column.parquet')), /has no "text" column/);
});

test('names: the table, and a local file of the same name wins', async () => {
  assert.equal(namedDataset('wikitext2')!.repo, 'Salesforce/wikitext');
  assert.equal(namedDataset('c4')!.eval!.file, 'en/c4-validation.00000-of-00008.json.gz');
  assert.equal(namedDataset('C4'), null);
  assert.equal(namedDataset('ptb'), null);
  const cwd = process.cwd();
  const d = join(work, 'shadow');
  mkdirSync(d, { recursive: true });
  writeFileSync(join(d, 'c4'), 'a local file named c4');
  process.chdir(d);
  try {
    assert.equal(isDatasetName('c4'), false);
    assert.equal(await resolveCorpus('c4', { ...fresh(), endpoint: 'http://127.0.0.1:9' }), 'c4');
  } finally {
    process.chdir(cwd);
  }
  assert.equal(isDatasetName('c4'), true);
  assert.equal(await resolveCorpus('some/file.txt', fresh()), 'some/file.txt');
});

test('wikitext2 perplexity: every row of the test split joined with "\\n\\n", tokenized with special tokens, consecutive windows', async () => {
  const tok = loadTokenizer(TINY);
  const o = fresh();
  const w = await namedEvalWindows('wikitext2', tok, TINY, 8, o);
  const ids = tok.encode(PARQUET_ROWS.join('\n\n'), { addSpecialTokens: true });
  assert.equal(ids[0], tok.bosId);
  assert.equal(w.count, Math.floor(ids.length / 8));
  assert.deepEqual([...w.windows], ids.slice(0, w.count * 8));
  assert.match(w.source, /datasets--Salesforce--wikitext\/snapshots\/[0-9a-f]{40}\/wikitext-2-raw-v1\/test-00000-of-00001\.parquet$/);
  await assert.rejects(namedEvalWindows('redpajama', tok, TINY, 8, o), /redpajama is a calibration dataset with no perplexity split; evaluate on wikitext2 or c4/);
});

test('c4 perplexity: 256 windows of the validation shard drawn as the official code does, cached per tokenizer', async () => {
  const tok = loadTokenizer(TINY);
  const o = fresh();
  const seqlen = 16;
  const w = await namedEvalWindows('c4', tok, TINY, seqlen, o);
  assert.equal(w.count, C4_EVAL_WINDOWS);
  const docs = (await readTextColumn(w.source));
  assert.deepEqual([...w.windows], [...c4EvalSample(docs, tok, seqlen, C4_EVAL_WINDOWS)]);
  // the second call reads the cached windows (the shard is not read again: make it unreadable)
  const again = await namedEvalWindows('c4', { bosId: null, encode: () => assert.fail('tokenized again') }, TINY, seqlen, { ...o, offline: true });
  assert.deepEqual([...again.windows], [...w.windows]);
});

/**
 * Runs `body` with the environment a user of the test hub has (HF_ENDPOINT on it, the caches of
 * `o`, online, no token), then puts the environment back as it was.
 */
async function withHubEnvironment(o: ReturnType<typeof fresh>, body: () => Promise<void>): Promise<void> {
  const saved = { ...process.env };
  process.env['HF_ENDPOINT'] = hub.endpoint;
  process.env['HF_HUB_CACHE'] = o.cacheDir!;
  process.env['EQAT_CACHE_DIR'] = o.eqatCacheDir!;
  delete process.env['HF_HUB_OFFLINE'];
  delete process.env['HF_TOKEN'];
  try {
    await body();
  } finally {
    for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
    Object.assign(process.env, saved);
  }
}

test('evaluatePerplexity takes a dataset name and a hub model name (HF_ENDPOINT, HF_HUB_CACHE)', async () => {
  const o = fresh();
  await withHubEnvironment(o, async () => {
    const r = await evaluatePerplexity('test-org/llama-tiny', 'wikitext2', { seqlen: 8, maxWindows: 3, quiet: true });
    const tok = loadTokenizer(TINY);
    const { windows } = await perplexityWindows('wikitext2', tok, TINY, 8, o);
    assert.equal(r.windows, 3);
    assert.ok(windows.length >= 24 && Number.isFinite(r.ppl));
    const local = await evaluatePerplexity(TINY, 'wikitext2', { seqlen: 8, maxWindows: 3, quiet: true });
    assert.equal(local.nll, r.nll);
    const c4 = await evaluatePerplexity(TINY, 'c4', { seqlen: 16, maxWindows: 2, quiet: true });
    assert.equal(c4.windows, 2);
  });
});

test('calibration corpora: wikitext2 the train parquet, c4 the first documents of the train shard, redpajama a sample of every file', async () => {
  const o = fresh();
  const wt = await resolveCorpus('wikitext2', o);
  assert.match(wt, /wikitext-2-raw-v1\/train-00000-of-00001\.parquet$/);
  assert.deepEqual(await readDocuments(wt), PARQUET_ROWS.filter((r) => r.trim() !== ''));
  const c4 = await resolveCorpus('c4', o);
  assert.ok(c4.startsWith(join(o.eqatCacheDir!, 'datasets')) && c4.endsWith('.jsonl'), c4);
  assert.deepEqual(await readDocuments(c4), paragraphs.slice().reverse());
  assert.equal(await resolveCorpus('c4', { ...o, offline: true }), c4, 'prepared once, found again offline');
  const rp = await resolveCorpus('redpajama', o);
  const docs = await readDocuments(rp);
  assert.equal(docs.length, 22);
  for (const f of NAMED_DATASETS.redpajama.calib.files) assert.ok(docs.includes(`${f} document one.`), f);
  await assert.rejects(resolveCorpus('c4', { ...fresh(), offline: true, flag: '--calib' }), /--calib dataset allenai\/c4: offline mode/);
});

test('quantize recipes name a hub model and datasets; the recipe is checked before any download', async () => {
  const o = fresh();
  await withHubEnvironment(o, async () => {
    const before = hub.log.length;
    await assert.rejects(resolveRecipeInputs({ model: 'test-org/llama-tiny', calib: 'c4', out: join(work, 'q'), wbits: 5 }, {}, 'r.yaml', { quiet: true }), /r\.yaml: wbits: must be 2, 3, 4 or 8/);
    assert.equal(hub.log.length, before, 'nothing asked of the hub');
    // group size checked against the config before the weights are fetched
    const fetched = hub.downloads('model.safetensors').length;
    await assert.rejects(resolveRecipeInputs({ model: 'test-org/llama-tiny', calib: 'c4', out: join(work, 'q'), wbits: 2, groupSize: 7 }, {}, 'r.yaml', { quiet: true }), /r\.yaml: group_size: 7 does not divide/);
    assert.equal(hub.downloads('model.safetensors').length, fetched);
    const r = await resolveRecipeInputs({ model: 'test-org/llama-tiny', calib: 'wikitext2', out: join(work, 'q'), wbits: 2, groupSize: 32, blockAp: { seqlen: 64 }, e2eQp: { data: 'c4', seqlen: 64 } }, {}, 'r.yaml', { quiet: true });
    assert.match(r.model, /models--test-org--llama-tiny\/snapshots\/[0-9a-f]{40}$/);
    assert.match(r.calib, /train-00000-of-00001\.parquet$/);
    assert.ok(r.e2eQp.data!.endsWith('.jsonl') && existsSync(r.e2eQp.data!));
    const m = mergeRecipe({ model: TINY, calib: 'c4', out: join(work, 'q'), wbits: 2, e2eQp: { dataFormat: 'instruct' } }, {}, 'r.yaml');
    assert.throws(() => validateRecipe(m, 'r.yaml'), /r\.yaml: calib: c4 is a text dataset; e2e_qp\.data_format 'instruct' needs a \.jsonl or \.json file/);
  });
});
