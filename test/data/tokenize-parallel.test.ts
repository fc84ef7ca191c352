// Parallel tokenisation (src/data/tokenize-parallel.ts) gives tokenizeDocuments' stream token for
// token: the join of slice streams on a toy encoder, and real worker threads on the fixture
// model's tokenizer; a tokenizer that cannot load makes the call fail with its reason, and one
// failing worker (an error thrown in it, an Error it posts, an early exit) ends its siblings
// instead of leaving them running.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { parseTxt } from '../../src/data/documents.js';
import { collectWorkerResults, joinTokenStreams, sliceDocuments, tokenizeDocumentsParallel } from '../../src/data/tokenize-parallel.js';
import { DOCUMENT_SEPARATOR, tokenizeDocuments, type TextEncoder } from '../../src/data/windows.js';
import { Rng } from '../../src/engine/random.js';

const MODEL = 'fixtures/llama-tiny';

const toy: TextEncoder = {
  bosId: 1,
  encode: (text) => [...text].map((c) => c.codePointAt(0)!),
};

test('joinTokenStreams of any slicing equals tokenizeDocuments of all documents (empty documents and slices too)', () => {
  const rng = new Rng(5);
  for (let trial = 0; trial < 50; trial++) {
    const docs = Array.from({ length: 1 + Math.floor(rng.next() * 12) }, () =>
      rng.next() < 0.25 ? '' : 'x'.repeat(1 + Math.floor(rng.next() * 9)),
    );
    const cuts = [0];
    for (let i = 1; i < docs.length; i++) if (rng.next() < 0.4) cuts.push(i);
    cuts.push(docs.length);
    const parts = cuts.slice(1).map((end, i) => tokenizeDocuments(docs.slice(cuts[i], end), toy));
    const joined = joinTokenStreams(parts, toy.encode(DOCUMENT_SEPARATOR));
    const whole = tokenizeDocuments(docs, toy);
    assert.deepEqual(joined.stream, whole.stream, `trial ${trial}: stream`);
    assert.deepEqual(joined.docStarts, whole.docStarts, `trial ${trial}: document starts`);
  }
});

test('sliceDocuments: contiguous, in order, none empty, at most n, about equal text', () => {
  const docs = Array.from({ length: 100 }, (_, i) => 'y'.repeat(1 + ((i * 37) % 50)));
  for (const n of [1, 2, 3, 7, 100, 500]) {
    const slices = sliceDocuments(docs, n);
    assert.ok(slices.length >= 1 && slices.length <= n, `n=${n}: ${slices.length} slices`);
    assert.ok(slices.every((s) => s.length > 0), `n=${n}: an empty slice`);
    assert.deepEqual(slices.flat(), docs, `n=${n}: not the documents in order`);
    if (n === 3) {
      const sizes = slices.map((s) => s.reduce((t, d) => t + d.length, 0));
      const total = sizes.reduce((a, b) => a + b, 0);
      for (const s of sizes) assert.ok(Math.abs(s - total / 3) < 60, `n=3: slice of ${s} chars of ${total}`);
    }
  }
});

test('tokenizeDocumentsParallel on worker threads equals tokenizeDocuments with the real tokenizer', async () => {
  const tok = loadTokenizer(MODEL);
  const docs = parseTxt(readFileSync('fixtures/text/calib-sample.txt', 'utf8')).slice(0, 60);
  docs.splice(3, 0, '', ''); // documents without tokens are left out of the starts
  const serial = tokenizeDocuments(docs, tok);
  const parallel = await tokenizeDocumentsParallel(docs, MODEL, tok, { threads: 3, minChars: 0 });
  assert.ok(serial.stream.length > 1000);
  assert.deepEqual(parallel.stream, serial.stream);
  assert.deepEqual(parallel.docStarts, serial.docStarts);
});

test('tokenizeDocumentsParallel: a tokenizer the workers cannot load fails the call with the reason', async () => {
  const tok = loadTokenizer(MODEL);
  await assert.rejects(
    tokenizeDocumentsParallel(['a b c', 'd e f'], 'fixtures/no-such-model', tok, { threads: 2, minChars: 0 }),
    /fixtures\/no-such-model.*does not exist/,
  );
});

test('collectWorkerResults: one worker failing terminates the others and rejects with its error', { timeout: 30_000 }, async () => {
  const sleepers = [0, 1].map(() => new Worker('setTimeout(() => {}, 600_000)', { eval: true }));
  const failing = new Worker('throw new Error("slice 1 could not be read")', { eval: true });
  const workers = [sleepers[0]!, failing, sleepers[1]!];
  await assert.rejects(collectWorkerResults(workers, 'test'), /slice 1 could not be read/);
  // a terminated worker's threadId becomes -1; one still running keeps its id
  assert.deepEqual(workers.map((w) => w.threadId), [-1, -1, -1]);
});

test('collectWorkerResults: results in worker order; a worker exiting without its result is an error', async () => {
  const posting = [3, 1, 2].map(
    (v) => new Worker(`require('node:worker_threads').parentPort.postMessage(${v})`, { eval: true }),
  );
  assert.deepEqual(await collectWorkerResults<number>(posting, 'test'), [3, 1, 2]);
  const silent = new Worker('process.exit(0)', { eval: true });
  await assert.rejects(collectWorkerResults([silent], 'test'), /test worker exited with code 0 before sending its result/);
});

// How the tokenizer workers fail: a worker dying of an uncaught error while terminate() reaches it
// can abort the whole process (see collectWorkerResults), so they post their error instead.
test('collectWorkerResults: a worker posting an Error fails the call with it and the others are terminated', { timeout: 30_000 }, async () => {
  const reporting = new Worker(`require('node:worker_threads').parentPort.postMessage(new Error('slice 0 could not be read'))`, { eval: true });
  const sleeper = new Worker('setTimeout(() => {}, 600_000)', { eval: true });
  await assert.rejects(collectWorkerResults([reporting, sleeper], 'test'), /slice 0 could not be read/);
  assert.deepEqual([reporting.threadId, sleeper.threadId], [-1, -1]);
});
