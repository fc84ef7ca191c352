// Conformance of the exports for every family eqat quantizes (test/export/families.ts: llama,
// mistral, qwen2 with q/k/v biases, qwen3 with q/k norms and tied embeddings) at w2g64 and
// w4g128 (RTN), each exported with the default options:
//   - transformers.js (the text-generation pipeline, greedy) generates the text `eqat generate`
//     does for 16 tokens (bos added as the tokenizer adds it) and onnxruntime's perplexity is
//     within 0.1% of eqat's on 4 windows of 128 tokens of ../shared/data/test-mix.txt;
//   - llama.cpp (node-llama-cpp; greedy text from LlamaCompletion at temperature 0, as a user
//     runs it; perplexity on 32 windows of 128):
//       * the default (integer) export with llama.cpp's defaults: perplexity within 1% of eqat's,
//         greedy text reported;
//       * the same with an f32 kv cache (LLAMA_CPP_F32_CACHE): perplexity within 0.1% of eqat's
//         forward with llama.cpp's rounding of linear inputs (test/export/runtimes.ts
//         llamaCppArithmetic: 8 bits per block of 32 before integer dot products). Its greedy
//         text is reported, not required: rounding is discontinuous, so float summation order
//         alone flips some roundings and the two part at near ties;
//       * the model exported with type and embeddingType 'f32' (every weight its exact f32
//         value, so llama.cpp rounds no linear's input) and an f32 kv cache: eqat's greedy text,
//         perplexity within 0.1% of eqat's;
//       * text that starts with a space tokenized as eqat does;
//   - the README's snippets for both runtimes, run as written (paths substituted).
// Skips when ../shared (or $EQAT_SHARED_DIR) lacks test-mix.txt, and each runtime's checks skip
// when it is not installed or cannot load.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { exportGguf } from '../../src/export/gguf.js';
import { exportOnnx } from '../../src/export/onnx.js';
import { windowsNll } from '../../src/pipeline/eval.js';
import { evalWindows } from '../../src/data/windows.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { WeightSource } from '../../src/model/weights.js';
import { Model } from '../../src/model/model.js';
import { loadConfig } from '../../src/io/hf-config.js';
import type { Backend } from '../../src/backend/backend.js';
import type { Tensor } from '../../src/engine/tensor.js';
import { REPO, writeRtn } from '../golden.js';
import { deriveFamily, FAMILIES } from '../export/families.js';
import {
  decoderDims,
  eqatGreedyIds,
  ggufHeadType,
  LLAMA_CPP_F32_CACHE,
  llamaCppArithmetic,
  llamaCppGreedyIds,
  llamaCppPerplexity,
  type LlamaCppContextSettings,
  loadLlamaCpp,
  loadOrt,
  ortPerplexity,
  sharedPath,
  tjsGreedyTexts,
} from '../export/runtimes.js';

const T = 128;
const WINDOWS = 4;
// llama.cpp's rounding moves each token's log-likelihood by about 1e-2 nats at random, so its
// perplexity is compared on more windows than the exact runtimes' (noise ~0.03% here)
const LLAMA_CPP_WINDOWS = 32;
const NEW_TOKENS = 16;
const PPL_TOLERANCE = 0.001;
// llama.cpp on an integer export against eqat's own (unrounded) forward: within 1%
const LLAMA_CPP_PPL_TOLERANCE = 0.01;
const PROMPT = 'The capital of France is';
const TEST_MIX = sharedPath('data/test-mix.txt');
const SKIP_DATA = TEST_MIX ? false : '../shared/data/test-mix.txt not present (nor under $EQAT_SHARED_DIR)';

const llamaCpp = await loadLlamaCpp();
const { ort, skip: SKIP_ORT } = await loadOrt();
type Tjs = typeof import('@huggingface/transformers');
let tjs: Tjs | null = null;
try {
  tjs = await import('@huggingface/transformers');
} catch {
  tjs = null;
}
const SKIP_TJS = tjs ? false : '@huggingface/transformers is not installed';

const WORK = mkdtempSync(join(tmpdir(), 'eqat-export-families-'));
process.env['EQAT_CACHE_DIR'] ??= join(WORK, 'token-cache');
symlinkSync(join(REPO, 'node_modules'), join(WORK, 'node_modules'));
after(async () => {
  await llamaCpp.llama?.dispose();
  rmSync(WORK, { recursive: true, force: true });
});

/** PROMPT's ids as eqat's tokenizer gives them, bos included. */
function promptIds(ckpt: string): number[] {
  return loadTokenizer(ckpt).encode(PROMPT, { addSpecialTokens: true });
}

/** eqat's greedy continuation of PROMPT (ids up to an eos): `eqat generate`'s, or with `be` that backend's (llamaCppArithmetic). */
function eqatTokens(ckpt: string, be?: Backend<Tensor>): number[] {
  return eqatGreedyIds(ckpt, [promptIds(ckpt)], NEW_TOKENS, be)[0]!;
}

/** eqat's greedy continuation of PROMPT as text: what `eqat generate` prints. */
function eqatText(ckpt: string): string {
  return loadTokenizer(ckpt).decode(eqatTokens(ckpt), { skipSpecialTokens: true });
}

/** Perplexity of `win` ((count, T) ids) under the checkpoint: eqat's evaluation, or with `be` that backend's forward. */
function eqatPerplexity(ckpt: string, win: Int32Array, count: number, be?: Backend<Tensor>): number {
  const src = WeightSource.open(ckpt);
  try {
    if (be === undefined) return Math.exp(windowsNll(src, win, count, T, { quiet: true }).nll);
    const model = new Model(be, src, { B: 4, T });
    try {
      let total = 0;
      model.windowLosses(win, count, (_, losses) => {
        for (let t = 0; t < T - 1; t++) total += losses[t]!;
      });
      return Math.exp(total / (count * (T - 1)));
    } finally {
      model.free();
    }
  } finally {
    src.close();
  }
}

/** llama.cpp's greedy continuation of PROMPT (eqat's ids) on the export `gguf` of `ckpt`, up to an eos. */
async function llamaCppTokens(ckpt: string, gguf: string, settings: LlamaCppContextSettings = {}): Promise<number[]> {
  return (await llamaCppGreedyIds(llamaCpp.llama!, gguf, [promptIds(ckpt)], NEW_TOKENS, loadConfig(ckpt).eosTokenIds, settings))[0]!;
}

const rows: string[] = [];
after(() =>
  console.log(
    `# family | bits | runtime | held to | greedy ${NEW_TOKENS} | ppl ratio\n${rows.map((r) => `# ${r}`).join('\n')}`,
  ),
);

/** 'same' when two greedy continuations are the same ids, else where they part. */
function sameIds(a: number[], b: number[]): string {
  let k = 0;
  while (k < a.length && k < b.length && a[k] === b[k]) k++;
  return k === a.length && k === b.length ? 'same' : `DIFFERENT from token ${k + 1}`;
}

/** The integer type of an export's linears, from its report's type counts. */
function linearTypeOf(types: Record<string, number>): string {
  return Object.keys(types).find((t) => t.startsWith('Q')) ?? '?';
}

for (const family of FAMILIES) {
  for (const [bits, group] of [[2, 64], [4, 128]] as const) {
    const label = `${family} w${bits}g${group}`;
    test(`${label}: transformers.js generates eqat's text, onnxruntime ppl within 0.1%; llama.cpp within 1%, within 0.1% of eqat with its rounding, and on the f32 export eqat's text and ppl within 0.1%`, { skip: SKIP_DATA }, async (t) => {
      const ckpt = await writeRtn(deriveFamily(join(WORK, `${family}-fp`), family), join(WORK, `${label.replace(' ', '-')}`), bits, group);
      const gguf = await exportGguf(ckpt, join(WORK, `${label.replace(' ', '-')}.gguf`));
      assert.equal(gguf.exact, true);
      const onnx = await exportOnnx(ckpt, join(WORK, `${label.replace(' ', '-')}-onnx`));
      const want = eqatText(ckpt);
      const { windows } = evalWindows(readFileSync(TEST_MIX!, 'utf8'), loadTokenizer(ckpt), T);
      const win = windows.subarray(0, WINDOWS * T);
      const eqatPpl = eqatPerplexity(ckpt, win, WINDOWS);
      await t.test('llama.cpp', { skip: llamaCpp.skip }, async () => {
        const lwin = windows.subarray(0, LLAMA_CPP_WINDOWS * T);
        const eqatLlamaPpl = eqatPerplexity(ckpt, lwin, LLAMA_CPP_WINDOWS);
        const perplexity = (path: string, context: LlamaCppContextSettings = {}): Promise<number> =>
          llamaCppPerplexity(llamaCpp.llama!, path, lwin, LLAMA_CPP_WINDOWS, T, { threads: 1, sequences: 4, context }).then((r) => r.ppl);
        const row = (what: string, ids: number[], idsWant: number[], ppl: number, pplWant: number): number => {
          rows.push(`${family} | w${bits}g${group} | llama.cpp ${what} | ${sameIds(ids, idsWant)} | ${(ppl / pplWant).toFixed(6)}`);
          return ppl / pplWant;
        };
        const wantIds = eqatTokens(ckpt);
        // the default export as users run it (f16 kv cache): near eqat
        const ids = await llamaCppTokens(ckpt, gguf.path);
        const ppl = await perplexity(gguf.path);
        const ratio = row(`${linearTypeOf(gguf.types)}, defaults | eqat`, ids, wantIds, ppl, eqatLlamaPpl);
        assert.ok(Math.abs(ratio - 1) < LLAMA_CPP_PPL_TOLERANCE, `ppl llama.cpp ${ppl} vs eqat ${eqatLlamaPpl}`);
        // the default export with an f32 kv cache: eqat's forward with llama.cpp's rounding
        const rounding = llamaCppArithmetic(ggufHeadType(gguf.types));
        const wantRounded = eqatTokens(ckpt, rounding);
        const pplRounded = eqatPerplexity(ckpt, lwin, LLAMA_CPP_WINDOWS, rounding);
        const idsF32Cache = await llamaCppTokens(ckpt, gguf.path, LLAMA_CPP_F32_CACHE);
        const pplF32Cache = await perplexity(gguf.path, LLAMA_CPP_F32_CACHE);
        const ratioRounded = row(`${linearTypeOf(gguf.types)}, f32 kv | eqat with llama.cpp's rounding`, idsF32Cache, wantRounded, pplF32Cache, pplRounded);
        assert.ok(Math.abs(ratioRounded - 1) < PPL_TOLERANCE, `ppl llama.cpp ${pplF32Cache} vs eqat with llama.cpp's rounding ${pplRounded}`);
        // the same model with exact f32 weights and an f32 kv cache: llama.cpp computes as eqat does
        const f32 = await exportGguf(ckpt, join(WORK, `${label.replace(' ', '-')}-f32.gguf`), { type: 'f32', embeddingType: 'f32' });
        assert.equal(f32.exact, true);
        const ids32 = await llamaCppTokens(ckpt, f32.path, LLAMA_CPP_F32_CACHE);
        const ppl32 = await perplexity(f32.path, LLAMA_CPP_F32_CACHE);
        const ratio32 = row('F32, f32 kv | eqat', ids32, wantIds, ppl32, eqatLlamaPpl);
        assert.deepEqual(ids32, wantIds, `llama.cpp's greedy tokens on the f32 export: ${JSON.stringify(ids32)} vs eqat ${JSON.stringify(wantIds)}`);
        assert.ok(Math.abs(ratio32 - 1) < PPL_TOLERANCE, `ppl llama.cpp (f32 export) ${ppl32} vs eqat ${eqatLlamaPpl}`);
        const model = await llamaCpp.llama!.loadModel({ modelPath: gguf.path, vocabOnly: true });
        try {
          for (const s of [PROMPT, ' The capital', '  two spaces', 'x\n y']) assert.deepEqual([...model.tokenize(s, true)], loadTokenizer(ckpt).encode(s, { addSpecialTokens: false }), JSON.stringify(s));
        } finally {
          await model.dispose();
        }
      });
      await t.test('transformers.js / onnxruntime', { skip: SKIP_TJS || SKIP_ORT }, async () => {
        const [text] = await tjsGreedyTexts(tjs!, onnx.dir, [PROMPT], NEW_TOKENS);
        const r = await ortPerplexity(ort!, onnx.onnxPath, decoderDims(onnx.dir), win, WINDOWS, T, { threads: 1, batch: 4 });
        const ratio = r.ppl / eqatPpl;
        rows.push(`${family} | w${bits}g${group} | transformers.js/onnxruntime | eqat | ${text === want ? 'same text' : 'DIFFERENT text'} | ${ratio.toFixed(6)}`);
        assert.equal(text, want, 'transformers.js greedy text');
        // decoding: spaces before punctuation kept as eqat keeps them (clean_up_tokenization_spaces)
        const spaced = 'a good way . It \'s fine , is n\'t it ?';
        const ids = loadTokenizer(ckpt).encode(spaced, { addSpecialTokens: false });
        const tjsTok = await tjs!.AutoTokenizer.from_pretrained(basename(onnx.dir));
        assert.equal(tjsTok.decode(ids, { skip_special_tokens: true }), loadTokenizer(ckpt).decode(ids, { skipSpecialTokens: true }));
        assert.ok(Math.abs(ratio - 1) < PPL_TOLERANCE, `ppl onnxruntime ${r.ppl} vs eqat ${eqatPpl}`);
      });
    });
  }
}

/** The ```js blocks of the README's "Running the output elsewhere" section. */
function readmeSnippets(): string[] {
  const md = readFileSync(join(REPO, 'README.md'), 'utf8');
  const section = md.slice(md.indexOf('### Running the output elsewhere'), md.indexOf('### Training data'));
  return [...section.matchAll(/```js\n([\s\S]*?)```/g)].map((m) => m[1]!);
}

test('the README snippets run (transformers.js prints eqat generate\'s text)', { skip: SKIP_DATA || llamaCpp.skip || SKIP_TJS }, async () => {
  const ckpt = join(WORK, 'llama-w2g64');
  const want = eqatText(ckpt);
  const [llamaSnippet, tjsSnippet] = readmeSnippets();
  assert.ok(llamaSnippet && tjsSnippet, 'one snippet per runtime');
  const run = (name: string, code: string): string => {
    writeFileSync(join(WORK, name), code);
    return execFileSync(process.execPath, [join(WORK, name)], { cwd: WORK, encoding: 'utf8', env: { ...process.env, NODE_LLAMA_CPP_LOG_LEVEL: 'error' } });
  };
  assert.ok(run('llama.mjs', llamaSnippet.replace("'model.gguf'", JSON.stringify(join(WORK, 'llama-w2g64.gguf')))).length > 0);
  const tjsOut = run('tjs.mjs', tjsSnippet.replace("'/path/to'", JSON.stringify(WORK)).replace("'DIR-w2g64-onnx'", "'llama-w2g64-onnx'"));
  assert.equal(tjsOut.trimEnd(), want.trimEnd());
});
