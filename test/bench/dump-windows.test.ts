// bench/torch-ref/dump-windows: its flags are checked, and bad input fails before anything is
// written; on good input it writes the windows the pipelines draw.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, TINY } from '../golden.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { sampleWindows, tokenizeDocuments } from '../../src/data/windows.js';

const SCRIPT = join(REPO, 'dist', 'bench', 'torch-ref', 'dump-windows.js');
const dump = (args: string[]) => spawnSync(process.execPath, [SCRIPT, ...args], { encoding: 'utf8' });

test('dump-windows: a missing flag, a bad number and an unreadable corpus fail with nothing written', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-dump-'));
  try {
    const out = join(dir, 'out');
    const missing = dump(['--calib', 'x.txt', '--eval', 'y.txt', '--out', out]);
    assert.notEqual(missing.status, 0);
    assert.match(missing.stderr, /--model is required/);
    const badSeed = dump(['--model', TINY, '--calib', 'x.txt', '--eval', 'y.txt', '--out', out, '--seed', 'two']);
    assert.notEqual(badSeed.status, 0);
    assert.match(badSeed.stderr, /--seed must be a non-negative integer, got two/);
    const noCorpus = dump(['--model', TINY, '--calib', join(dir, 'absent.txt'), '--eval', join(dir, 'absent.txt'), '--out', out]);
    assert.notEqual(noCorpus.status, 0);
    assert.match(noCorpus.stderr, /absent\.txt/);
    assert.equal(existsSync(out), false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('dump-windows: writes the Block-AP draw as sampleWindows gives it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-dump-'));
  try {
    const docs = Array.from({ length: 40 }, (_, i) => `Document ${i}: ${'words and more words '.repeat(8 + (i % 5))}`);
    const corpus = join(dir, 'corpus.txt');
    writeFileSync(corpus, docs.join('\n\n') + '\n');
    const out = join(dir, 'out');
    const r = dump(['--model', TINY, '--calib', corpus, '--eval', corpus, '--out', out, '--seqlen', '16', '--train-size', '6', '--val-size', '2', '--seed', '3']);
    assert.equal(r.status, 0, r.stderr);
    const tok = loadTokenizer(TINY);
    const want = sampleWindows(tokenizeDocuments(docs, tok), tok, { seqlen: 16, trainSize: 6, valSize: 2, seed: 3 });
    const read = (name: string) => new Int32Array(new Uint8Array(readFileSync(join(out, name))).buffer);
    assert.deepEqual(read('block-ap-train.i32'), want.train);
    assert.deepEqual(read('block-ap-val.i32'), want.val);
    assert.equal(JSON.parse(readFileSync(join(out, 'windows.json'), 'utf8')).seqlen, 16);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
