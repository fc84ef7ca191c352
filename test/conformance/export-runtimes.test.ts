// Optional conformance: the GGUF and ONNX exports scored by their own runtimes on the whole of
// ../shared/data/test-mix.txt at seqlen 512 (the whole file tokenized without special tokens,
// non-overlapping 512-token windows, remainder dropped, mean next-token NLL over every window),
// against `eqat eval` (src/pipeline/eval.ts windowsNll) on the same checkpoint and windows:
//   - llama.cpp through node-llama-cpp, from its logits: perplexity within 1% of eqat's;
//   - onnxruntime-node, from its logits: perplexity within 0.5% of eqat's.
// Models: llama-tiny (the bundled fixture, the same model as ../shared/models/llama-tiny) at
// w2g64, w3g128 and w4g128, and ../shared/models/llama-small at w2g64, each quantized by
// round-to-nearest (Block-AP with --epochs 0) and exported with the automatic, exact GGUF types.
// llama-small at 3 and 4 bits (and trained checkpoints) are in bench/export-runtimes.ts: every
// extra llama-small configuration costs minutes here. The whole file took 21 minutes of wall time
// (18 of CPU) on the project's 2-vCPU machine shared with a benchmark using both vCPUs (load
// average 3.5 to 5.5); most of llama.cpp's share goes to reading logits one position at a time. llama.cpp also tokenizes the whole file to
// exactly the ids eqat's tokenizer gives, so its windows are its own.
// Skips when ../shared (or $EQAT_SHARED_DIR) lacks the data, and each runtime's checks skip
// when it is not installed or cannot load.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { exportGguf, type GgufExportReport } from '../../src/export/gguf.js';
import { exportOnnx, type OnnxExportReport } from '../../src/export/onnx.js';
import { windowsNll } from '../../src/pipeline/eval.js';
import { evalWindows } from '../../src/data/windows.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { WeightSource } from '../../src/model/weights.js';
import { TINY, writeRtn } from '../golden.js';
import { decoderDims, llamaCppPerplexity, llamaCppTokenize, loadLlamaCpp, loadOrt, ortPerplexity, sharedPath } from '../export/runtimes.js';

const T = 512;
const LLAMA_CPP_TOLERANCE = 0.01;
const ORT_TOLERANCE = 0.005;

const TEST_MIX = sharedPath('data/test-mix.txt');
const smallGolden = sharedPath('models/llama-small/golden.json');
const SMALL = smallGolden ? dirname(smallGolden) : null;
const SKIP_DATA = TEST_MIX ? false : '../shared/data/test-mix.txt not present (nor under $EQAT_SHARED_DIR)';

const llamaCpp = await loadLlamaCpp();
const { ort, skip: SKIP_ORT } = await loadOrt();
const SKIP_NLC = llamaCpp.skip;

interface Case {
  model: 'llama-tiny' | 'llama-small';
  dir: string | null;
  bits: number;
  group: number;
}
const CASES: Case[] = [
  { model: 'llama-tiny', dir: TINY, bits: 2, group: 64 },
  { model: 'llama-tiny', dir: TINY, bits: 3, group: 128 },
  { model: 'llama-tiny', dir: TINY, bits: 4, group: 128 },
  { model: 'llama-small', dir: SMALL, bits: 2, group: 64 },
];

interface Prepared {
  ckpt: string;
  gguf: GgufExportReport;
  onnx: OnnxExportReport;
  windows: Int32Array; // (count, T) flattened
  count: number;
  eqatPpl: number;
  eqatSeconds: number;
}

let WORK = '';
const prepared = new Map<Case, Promise<Prepared>>();
const windowsByTokenizer = new Map<string, { windows: Int32Array; count: number }>();

before(() => {
  WORK = mkdtempSync(join(tmpdir(), 'eqat-export-runtimes-'));
  process.env['EQAT_CACHE_DIR'] ??= join(WORK, 'token-cache');
});

after(async () => {
  await llamaCpp.llama?.dispose();
  if (WORK) rmSync(WORK, { recursive: true, force: true });
});

/** test-mix windows of T tokens under `dir`'s tokenizer (tokenized once per distinct tokenizer.json). */
function testMixWindows(dir: string): { windows: Int32Array; count: number } {
  const key = readFileSync(join(dir, 'tokenizer.json'), 'utf8');
  let w = windowsByTokenizer.get(key);
  if (!w) {
    const { windows, count } = evalWindows(readFileSync(TEST_MIX!, 'utf8'), loadTokenizer(dir), T);
    w = { windows, count };
    windowsByTokenizer.set(key, w);
  }
  return w;
}

/** RTN checkpoint of the case, both exports, and eqat's own test-mix perplexity (once per case). */
function prepare(c: Case): Promise<Prepared> {
  let p = prepared.get(c);
  if (!p) {
    p = (async () => {
      const name = `${c.model}-w${c.bits}g${c.group}`;
      const ckpt = join(WORK, name);
      await writeRtn(c.dir!, ckpt, c.bits, c.group);
      const gguf = await exportGguf(ckpt, join(WORK, `${name}.gguf`));
      const onnx = await exportOnnx(ckpt, join(WORK, `${name}-onnx`));
      const { windows, count } = testMixWindows(ckpt);
      const t0 = performance.now();
      const src = WeightSource.open(ckpt);
      let nll: number;
      try {
        nll = windowsNll(src, windows, count, T, { quiet: true }).nll;
      } finally {
        src.close();
      }
      return { ckpt, gguf, onnx, windows, count, eqatPpl: Math.exp(nll), eqatSeconds: (performance.now() - t0) / 1000 };
    })();
    prepared.set(c, p);
  }
  return p;
}

test('llama.cpp tokenizes all of test-mix.txt to the ids eqat evaluates', { skip: SKIP_DATA || SKIP_NLC }, async (t) => {
  const p = await prepare(CASES[0]!);
  const ids = await llamaCppTokenize(llamaCpp.llama!, p.gguf.path, readFileSync(TEST_MIX!, 'utf8'));
  assert.equal(Math.floor(ids.length / T), p.count, 'same number of windows');
  let firstDiff = -1;
  for (let i = 0; i < p.count * T && firstDiff < 0; i++) if (ids[i] !== p.windows[i]) firstDiff = i;
  assert.equal(firstDiff, -1, `llama.cpp's ids differ from eqat's first at token ${firstDiff}`);
  t.diagnostic(`${ids.length} tokens, ${p.count} windows of ${T}: identical`);
});

for (const c of CASES) {
  const label = `${c.model} w${c.bits}g${c.group}`;
  const skip = SKIP_DATA || (c.dir ? false : `../shared/models/${c.model} not present`) || (SKIP_NLC && SKIP_ORT ? `${SKIP_NLC}; ${SKIP_ORT}` : false);
  test(`${label}: test-mix perplexity at ${T} (llama.cpp within 1%, onnxruntime within 0.5% of eqat)`, { skip }, async (t) => {
    const p = await prepare(c);
    assert.equal(p.gguf.exact, true, `exact GGUF export (types ${JSON.stringify(p.gguf.types)})`);
    assert.ok(p.count >= 100, `test-mix gives ${p.count} windows of ${T}`);
    t.diagnostic(`${label}: ${p.count} windows of ${T}; eqat ppl ${p.eqatPpl.toFixed(4)} (${p.eqatSeconds.toFixed(1)} s)`);

    await t.test('llama.cpp (node-llama-cpp) on the GGUF export', { skip: SKIP_NLC }, async (st) => {
      const r = await llamaCppPerplexity(llamaCpp.llama!, p.gguf.path, p.windows, p.count, T, { threads: 1, sequences: 4 });
      const ratio = r.ppl / p.eqatPpl;
      st.diagnostic(
        `${label} GGUF ${JSON.stringify(p.gguf.types)} ${p.gguf.bytes} bytes: ppl llama.cpp ${r.ppl.toFixed(4)} vs eqat ${p.eqatPpl.toFixed(4)}, ratio ${ratio.toFixed(6)} (${r.seconds.toFixed(1)} s)`,
      );
      assert.ok(Math.abs(ratio - 1) < LLAMA_CPP_TOLERANCE, `${label}: llama.cpp ppl ${r.ppl} vs eqat ${p.eqatPpl} (ratio ${ratio})`);
    });

    await t.test('onnxruntime-node on the ONNX export', { skip: SKIP_ORT }, async (st) => {
      const r = await ortPerplexity(ort!, p.onnx.onnxPath, decoderDims(p.onnx.dir), p.windows, p.count, T, { threads: 2, batch: 8 });
      const ratio = r.ppl / p.eqatPpl;
      st.diagnostic(
        `${label} ONNX MatMulNBits ${p.onnx.bits}-bit block ${p.onnx.blockSize}, ${p.onnx.bytes} bytes: ppl onnxruntime ${r.ppl.toFixed(4)} vs eqat ${p.eqatPpl.toFixed(4)}, ratio ${ratio.toFixed(7)} (${r.seconds.toFixed(1)} s)`,
      );
      assert.ok(Math.abs(ratio - 1) <= ORT_TOLERANCE, `${label}: onnxruntime ppl ${r.ppl} vs eqat ${p.eqatPpl} (ratio ${ratio})`);
    });
  });
}
