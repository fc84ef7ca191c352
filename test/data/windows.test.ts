// Token windows: stream construction, disjoint seeded sampling (determinism, uniformity over
// configurations, exact tiling, too-small corpus), the bos rule, the evaluation stream, and the
// on-disk token-stream cache. Uses a toy encoder with one id per code point and bos = 0.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  evalWindows,
  loadTokenStream,
  sampleWindows,
  saveTokenStream,
  tokenStreamKey,
  tokenizeDocuments,
  type TextEncoder,
  type WindowSample,
} from '../../src/data/windows.js';
import { Rng } from '../../src/engine/random.js';

const BOS = 0;

/** One token per code point; like Hugging Face tokenizers, special tokens are added by default. */
class ToyEncoder implements TextEncoder {
  calls: { text: string; addSpecialTokens: boolean | undefined }[] = [];
  constructor(readonly bosId: number | null = BOS) {}
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[] {
    this.calls.push({ text, addSpecialTokens: opts?.addSpecialTokens });
    const ids = [...text].map((c) => c.codePointAt(0)!);
    return (opts?.addSpecialTokens ?? true) && this.bosId !== null ? [this.bosId, ...ids] : ids;
  }
}

/**
 * Documents made of distinct characters (CJK block, no whitespace), so every non-separator token
 * id occurs once in the stream and identifies its position.
 */
function uniqueDocs(lengths: number[]): string[] {
  let next = 0x4e00;
  return lengths.map((n) => {
    let s = '';
    for (let i = 0; i < n; i++) {
      if (next === 0xd800) next = 0xe000; // skip the surrogate range
      s += String.fromCodePoint(next++);
    }
    return s;
  });
}

/** The stream and document starts computed independently of the code under test. */
function expectedStream(docs: string[]): { stream: number[]; docStarts: number[] } {
  const stream: number[] = [];
  const docStarts: number[] = [];
  for (const d of docs) {
    if (d.length === 0) continue;
    if (docStarts.length > 0) stream.push(10, 10); // "\n\n"
    docStarts.push(stream.length);
    for (const c of d) stream.push(c.codePointAt(0)!);
  }
  return { stream, docStarts };
}

function randomLengths(rng: Rng, count: number, lo: number, hi: number): number[] {
  return Array.from({ length: count }, () => rng.int(lo, hi));
}

/** Checks every window against the independent stream, the bos rule and pairwise disjointness. */
function checkSample(s: WindowSample, docs: string[], bosId: number | null, opts: { trainSize: number; valSize: number; seqlen: number }): {
  atDocStart: number;
  inside: number;
} {
  const { stream, docStarts } = expectedStream(docs);
  const L = opts.seqlen;
  assert.equal(s.seqlen, L);
  assert.equal(s.train.length, opts.trainSize * L);
  assert.equal(s.val.length, opts.valSize * L);
  assert.equal(s.trainStarts.length, opts.trainSize);
  assert.equal(s.valStarts.length, opts.valSize);
  const starts = new Set(docStarts);
  let atDocStart = 0;
  let inside = 0;
  const rows: [Int32Array, number][] = [];
  for (let w = 0; w < opts.trainSize; w++) rows.push([s.train.subarray(w * L, (w + 1) * L), s.trainStarts[w]!]);
  for (let w = 0; w < opts.valSize; w++) rows.push([s.val.subarray(w * L, (w + 1) * L), s.valStarts[w]!]);
  for (const [row, st] of rows) {
    assert.ok(st >= 0 && st + L <= stream.length, `start ${st} in range`);
    const bos = bosId !== null && starts.has(st);
    const want = bos ? [bosId, ...stream.slice(st, st + L - 1)] : stream.slice(st, st + L);
    assert.deepEqual(Array.from(row), want, `window at ${st}`);
    if (starts.has(st)) atDocStart++;
    else inside++;
    if (!bos && bosId !== null) assert.ok(!Array.from(row).includes(bosId), `no bos inside the window at ${st}`);
  }
  // Pairwise disjoint stream ranges [start, start + L): sorted starts at least L apart.
  const all = [...s.trainStarts, ...s.valStarts].sort((a, b) => a - b);
  for (let i = 1; i < all.length; i++) assert.ok(all[i]! - all[i - 1]! >= L, `windows at ${all[i - 1]} and ${all[i]} overlap`);
  // Independent of the reported starts: no stream token (other than separators/bos) appears twice.
  const seen = new Set<number>();
  for (const v of [...s.train, ...s.val]) {
    if (v === 10 || v === bosId) continue;
    assert.ok(!seen.has(v), `token ${v} appears in two windows`);
    seen.add(v);
  }
  return { atDocStart, inside };
}

test('tokenizeDocuments: documents joined by the separator tokens, starts recorded, no special tokens', () => {
  const enc = new ToyEncoder();
  const docs = ['ab', '', 'cde', 'f'];
  const ts = tokenizeDocuments(docs, enc);
  const want = expectedStream(docs);
  assert.deepEqual(Array.from(ts.stream), want.stream);
  assert.deepEqual(Array.from(ts.docStarts), [0, 4, 9]);
  assert.deepEqual(Array.from(ts.docStarts), want.docStarts);
  assert.ok(enc.calls.every((c) => c.addSpecialTokens === false), 'every encode call disables special tokens');
  // Larger than the initial buffer: growth keeps every token.
  const big = uniqueDocs(randomLengths(new Rng(3), 400, 100, 400));
  const tsBig = tokenizeDocuments(big, enc);
  const wantBig = expectedStream(big);
  assert.deepEqual(Array.from(tsBig.stream), wantBig.stream);
  assert.deepEqual(Array.from(tsBig.docStarts), wantBig.docStarts);
});

test('sampleWindows: windows match the stream, bos only at document starts, all disjoint', () => {
  const docs = uniqueDocs(randomLengths(new Rng(11), 300, 1, 12)); // short documents: many starts
  const opts = { seqlen: 7, trainSize: 60, valSize: 20, seed: 5 };
  let atDocStart = 0;
  let inside = 0;
  for (let seed = 0; seed < 20; seed++) {
    const s = sampleWindows(docs, new ToyEncoder(), { ...opts, seed });
    const c = checkSample(s, docs, BOS, opts);
    atDocStart += c.atDocStart;
    inside += c.inside;
  }
  assert.ok(atDocStart > 50 && inside > 50, `both kinds of window occur (${atDocStart} at a start, ${inside} inside)`);
});

test('sampleWindows: an encoder without bos leaves document-start windows as plain stream slices', () => {
  const docs = uniqueDocs(randomLengths(new Rng(12), 200, 1, 6));
  const opts = { seqlen: 5, trainSize: 40, valSize: 10, seed: 9 };
  const s = sampleWindows(docs, new ToyEncoder(null), opts);
  const c = checkSample(s, docs, null, opts);
  assert.ok(c.atDocStart > 0, 'some window starts at a document start');
});

test('sampleWindows: deterministic per seed, different seeds differ, documents or token stream alike', () => {
  const docs = uniqueDocs(randomLengths(new Rng(13), 100, 5, 40));
  const opts = { seqlen: 16, trainSize: 30, valSize: 8, seed: 1234 };
  const a = sampleWindows(docs, new ToyEncoder(), opts);
  const b = sampleWindows(docs, new ToyEncoder(), opts);
  const c = sampleWindows(tokenizeDocuments(docs, new ToyEncoder()), new ToyEncoder(), opts);
  for (const x of [b, c]) {
    assert.deepEqual(x.train, a.train);
    assert.deepEqual(x.val, a.val);
    assert.deepEqual(x.trainStarts, a.trainStarts);
    assert.deepEqual(x.valStarts, a.valStarts);
  }
  const seen = new Set<string>([Array.from(a.trainStarts).join(',')]);
  for (const seed of [0, 1, 1235, 2 ** 31, -7]) {
    const d = sampleWindows(docs, new ToyEncoder(), { ...opts, seed });
    const key = Array.from(d.trainStarts).join(',');
    assert.ok(!seen.has(key), `seed ${seed} gives its own windows`);
    seen.add(key);
    assert.notDeepEqual(d.val, a.val);
  }
});

test('sampleWindows: starts are uniform over the stream and sets are uniform over configurations', () => {
  // One window of 4 in 20 tokens: 17 possible starts, each 1/17.
  const enc = new ToyEncoder();
  const ts = tokenizeDocuments(uniqueDocs([20]), enc);
  const trials = 17_000;
  const counts = new Array<number>(17).fill(0);
  for (let seed = 0; seed < trials; seed++) {
    counts[sampleWindows(ts, enc, { seqlen: 4, trainSize: 1, valSize: 0, seed }).trainStarts[0]!]!++;
  }
  const sd1 = Math.sqrt(trials * (1 / 17) * (16 / 17));
  for (let i = 0; i < 17; i++) assert.ok(Math.abs(counts[i]! - trials / 17) < 5 * sd1, `start ${i}: ${counts[i]}`);

  // Two disjoint windows of 3 in 12 tokens: C(12 - 6 + 2, 2) = 28 sets, each 1/28; and the train
  // window is either member with probability 1/2.
  const ts12 = tokenizeDocuments(uniqueDocs([12]), enc);
  const sets = new Map<string, number>();
  let firstIsLower = 0;
  for (let seed = 0; seed < trials; seed++) {
    const s = sampleWindows(ts12, enc, { seqlen: 3, trainSize: 1, valSize: 1, seed });
    const [t, v] = [s.trainStarts[0]!, s.valStarts[0]!];
    assert.ok(Math.abs(t - v) >= 3);
    sets.set(`${Math.min(t, v)},${Math.max(t, v)}`, (sets.get(`${Math.min(t, v)},${Math.max(t, v)}`) ?? 0) + 1);
    if (t < v) firstIsLower++;
  }
  assert.equal(sets.size, 28);
  const sd2 = Math.sqrt(trials * (1 / 28) * (27 / 28));
  for (const [k, n] of sets) assert.ok(Math.abs(n - trials / 28) < 5 * sd2, `set ${k}: ${n}`);
  assert.ok(Math.abs(firstIsLower - trials / 2) < 5 * Math.sqrt(trials / 4), `train below val ${firstIsLower}`);
});

test('sampleWindows: a corpus of exactly the needed size is tiled; one token fewer is an exact error', () => {
  const enc = new ToyEncoder();
  // 3 documents of 10 + 2 separators of 2 = 34 tokens; 2 + 0 windows of 17 tile it.
  const docs = uniqueDocs([10, 10, 10]);
  assert.equal(tokenizeDocuments(docs, enc).stream.length, 34);
  const s = sampleWindows(docs, enc, { seqlen: 17, trainSize: 1, valSize: 1, seed: 3 });
  assert.deepEqual([s.trainStarts[0], s.valStarts[0]].sort(), [0, 17]);
  checkSample(s, docs, BOS, { seqlen: 17, trainSize: 1, valSize: 1 });
  // Tiling with many windows: every window used, starts a permutation of multiples of L.
  const t = sampleWindows(docs, enc, { seqlen: 2, trainSize: 12, valSize: 5, seed: 8 });
  assert.deepEqual([...t.trainStarts, ...t.valStarts].sort((a, b) => a - b), Array.from({ length: 17 }, (_, i) => 2 * i));

  assert.throws(
    () => sampleWindows(docs, enc, { seqlen: 7, trainSize: 4, valSize: 1, seed: 0 }, 'calibration data /data/calib.txt'),
    (e: Error) => {
      assert.equal(
        e.message,
        'calibration data /data/calib.txt: corpus too small: it has 34 tokens, but 4 train + 1 val ' +
          'non-overlapping windows of 7 tokens need 35 tokens',
      );
      return true;
    },
  );
  assert.throws(
    () => sampleWindows(['abc'], enc, { seqlen: 4, trainSize: 1, valSize: 0, seed: 0 }),
    /^RangeError: sampleWindows: corpus too small: it has 3 tokens, but 1 train \+ 0 val non-overlapping windows of 4 tokens need 4 tokens$/,
  );
});

test('sampleWindows: option checks name the option', () => {
  const enc = new ToyEncoder();
  const docs = ['abcdefgh'];
  const base = { seqlen: 2, trainSize: 1, valSize: 1, seed: 0 };
  assert.throws(() => sampleWindows(docs, enc, { ...base, seqlen: 0 }, 'calib.txt'), /^RangeError: calib\.txt: seqlen must be an integer >= 1 \(got 0\)$/);
  assert.throws(() => sampleWindows(docs, enc, { ...base, seqlen: 2.5 }), /seqlen must be an integer >= 1 \(got 2\.5\)/);
  assert.throws(() => sampleWindows(docs, enc, { ...base, trainSize: -1 }), /trainSize must be an integer >= 0 \(got -1\)/);
  assert.throws(() => sampleWindows(docs, enc, { ...base, valSize: NaN }), /valSize must be an integer >= 0 \(got NaN\)/);
  assert.throws(() => sampleWindows(docs, enc, { ...base, seed: 0.5 }), /seed must be an integer \(got 0\.5\)/);
  const none = sampleWindows(docs, enc, { ...base, trainSize: 0, valSize: 0 });
  assert.equal(none.train.length + none.val.length, 0);
});

test('evalWindows: one encode call without special tokens, remainder dropped', () => {
  const enc = new ToyEncoder();
  const text = 'The quick brown fox\n\njumps.'; // 27 code points
  const e = evalWindows(text, enc, 5);
  assert.equal(enc.calls.length, 1);
  assert.deepEqual(enc.calls[0], { text, addSpecialTokens: false });
  assert.equal(e.count, 5);
  assert.equal(e.windows.length, 25);
  assert.deepEqual(Array.from(e.windows), [...text].slice(0, 25).map((c) => c.codePointAt(0)!));
  assert.ok(!e.windows.includes(BOS));
  const exact = evalWindows(text, new ToyEncoder(), 27);
  assert.equal(exact.count, 1);
  assert.throws(() => evalWindows(text, new ToyEncoder(), 28, 'wikitext2-test.txt'), /^RangeError: wikitext2-test\.txt: evaluation text has 27 tokens, fewer than one window of seqlen 28$/);
  assert.throws(() => evalWindows(text, new ToyEncoder(), 0), /evalWindows: seqlen must be an integer >= 1/);
});

test('token stream cache: round trip, wrong key, missing and damaged files', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-windows-'));
  try {
    const enc = new ToyEncoder();
    const docs = uniqueDocs(randomLengths(new Rng(14), 50, 1, 30));
    const ts = tokenizeDocuments(docs, enc);
    const key = tokenStreamKey(docs.join('\n\n'), 'toy-encoder');
    for (const k of [key, 'ключ with odd length']) {
      const path = join(dir, 'sub', `cache-${k.length}.bin`);
      saveTokenStream(path, ts, k);
      const back = loadTokenStream(path, k);
      assert.ok(back);
      assert.deepEqual(back.stream, ts.stream);
      assert.deepEqual(back.docStarts, ts.docStarts);
      assert.equal(loadTokenStream(path, k + 'x'), null, 'another key is a miss');
      const bytes = readFileSync(path);
      writeFileSync(path, new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.length - 4));
      assert.equal(loadTokenStream(path, k), null, 'a truncated file is a miss');
    }
    assert.equal(loadTokenStream(join(dir, 'absent.bin'), key), null);
    const opts = { seqlen: 8, trainSize: 10, valSize: 2, seed: 4 };
    saveTokenStream(join(dir, 'c.bin'), ts, key);
    assert.deepEqual(sampleWindows(loadTokenStream(join(dir, 'c.bin'), key)!, enc, opts), sampleWindows(docs, enc, opts));
    assert.notEqual(tokenStreamKey('corpus', 'tokenizer A'), tokenStreamKey('corpus', 'tokenizer B'));
    assert.notEqual(tokenStreamKey('corpus 1', 'tokenizer'), tokenStreamKey('corpus 2', 'tokenizer'));
    assert.equal(tokenStreamKey(new TextEncoderUtf8().encode('c'), 't'), tokenStreamKey('c', 't'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// The global WHATWG TextEncoder is shadowed by the imported interface name.
const TextEncoderUtf8 = globalThis.TextEncoder;
