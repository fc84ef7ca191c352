// Greedy text of eqat's exports in their runtimes against `eqat generate`: for each checkpoint
// and each prompt (the first 8 words of the first --prompts paragraphs of at least 16 words of
// ../shared/data/wikitext2-test.txt whose first 8 words hold no <unk> or @-@ marks), --new-tokens
// tokens at temperature 0 from
//   - eqat generate (the reference);
//   - llama.cpp (node-llama-cpp's LlamaCompletion) on the default, exact integer GGUF, with its
//     default context (f16 kv cache), as users run it;
//   - the same with an f32 kv cache and no flash attention, held to eqat's forward with
//     llama.cpp's 8-bit rounding of linear inputs (test/export/runtimes.ts llamaCppArithmetic);
//   - llama.cpp with an f32 kv cache on the `--gguf-type f32 --embedding-type f32` export (every
//     weight an exact f32 value, so that llama.cpp rounds no linear's input);
//   - transformers.js (the text-generation pipeline) on the ONNX export.
// Prints a markdown table: per checkpoint and run, the prompts whose continuation equals the
// reference's (token ids for llama.cpp, whose detokenizer drops a space before punctuation where
// eqat keeps it; text for transformers.js, as its pipeline returns), and the mean share of the
// reference the run reproduces before it departs.
//
// usage: node dist/bench/export-greedy.js [--model QUANT_DIR ...] [--prompts P] [--new-tokens N]
//   --model DIR     an eqat quantized checkpoint (only read); repeatable. Without --model:
//                   ../shared/models/llama-small by round-to-nearest (Block-AP --epochs 0) at
//                   w2g64, w3g128 and w4g128.
//   --prompts P     prompts per checkpoint (default 24)
//   --new-tokens N  tokens generated per prompt (default 32)
// Exits 0 with a message when ../shared (or $EQAT_SHARED_DIR) lacks wikitext2-test.txt, or
// llama-small when no --model is given; a runtime that is not installed is reported as skipped.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { exportGguf } from '../src/export/gguf.js';
import { exportOnnx } from '../src/export/onnx.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { loadConfig } from '../src/io/hf-config.js';
import type { Backend } from '../src/backend/backend.js';
import type { Tensor } from '../src/engine/tensor.js';
import { writeRtn } from '../test/golden.js';
import {
  eqatGreedyIds,
  ggufHeadType,
  LLAMA_CPP_F32_CACHE,
  llamaCppArithmetic,
  llamaCppGreedyIds,
  loadLlamaCpp,
  sharedPath,
  tjsGreedyTexts,
  type LlamaCppContextSettings,
} from '../test/export/runtimes.js';

const argv = process.argv.slice(2);
const sharedEnv = process.env['EQAT_SHARED_DIR'];
const command = `${sharedEnv ? `EQAT_SHARED_DIR=${sharedEnv} ` : ''}node dist/bench/export-greedy.js${argv.length ? ' ' + argv.join(' ') : ''}`;
const usage = 'usage: node dist/bench/export-greedy.js [--model QUANT_DIR ...] [--prompts P] [--new-tokens N]';
const models: string[] = [];
let promptCount = 24;
let newTokens = 32;
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]!;
  const value = (): number => {
    const v = Number(argv[++i]);
    if (!(Number.isInteger(v) && v >= 1)) {
      console.error(`bench/export-greedy: ${a} must be a positive integer, got ${JSON.stringify(argv[i])}\n${usage}`);
      process.exit(2);
    }
    return v;
  };
  if (a === '--model' && argv[i + 1]) models.push(resolve(argv[++i]!));
  else if (a === '--prompts') promptCount = value();
  else if (a === '--new-tokens') newTokens = value();
  else {
    console.error(`bench/export-greedy: unknown argument ${JSON.stringify(a)}\n${usage}`);
    process.exit(2);
  }
}
for (const m of models) {
  if (!existsSync(join(m, 'config.json'))) {
    console.error(`bench/export-greedy: --model ${m} is not an eqat checkpoint (no config.json)`);
    process.exit(2);
  }
}

const wikitext = sharedPath('data/wikitext2-test.txt');
const smallGolden = sharedPath('models/llama-small/golden.json');
if (!wikitext || (models.length === 0 && !smallGolden)) {
  console.log('bench/export-greedy: ../shared/data/wikitext2-test.txt (and, without --model, ../shared/models/llama-small) not present; skipping');
  process.exit(0);
}
const prompts = readFileSync(wikitext, 'utf8')
  .split('\n')
  .map((l) => l.trim().split(/\s+/))
  .filter((w) => w.length >= 16 && w[0] !== '=' && !w.slice(0, 8).some((x) => /[<>@]/.test(x)))
  .slice(0, promptCount)
  .map((w) => w.slice(0, 8).join(' '));
if (process.env['EQAT_BENCH_SHOW']) console.error(prompts);

const work = mkdtempSync(join(tmpdir(), 'eqat-bench-greedy-'));
symlinkSync(join(dirname(dirname(dirname(new URL(import.meta.url).pathname))), 'node_modules'), join(work, 'node_modules'));
const llamaCpp = await loadLlamaCpp();
type Tjs = typeof import('@huggingface/transformers');
let tjs: Tjs | null = null;
try {
  tjs = await import('@huggingface/transformers');
} catch {
  tjs = null;
}
const loadBefore = loadavg()[0]!;

const rows: { model: string; dir: string }[] = models.map((m) => ({ model: m, dir: m }));
if (models.length === 0) {
  for (const [bits, group] of [
    [2, 64],
    [3, 128],
    [4, 128],
  ] as const) {
    const out = join(work, `rtn-w${bits}g${group}`);
    await writeRtn(dirname(smallGolden!), out, bits, group);
    rows.push({ model: `llama-small RTN w${bits}g${group}`, dir: out });
  }
}

/** eqat's prompt ids (bos included) of every prompt. */
function promptIds(dir: string): number[][] {
  const tok = loadTokenizer(dir);
  return prompts.map((p) => tok.encode(p, { addSpecialTokens: true }));
}

/** eqat's greedy continuations of every prompt (ids up to an eos): `eqat generate`'s, or the forward of `be`. */
function eqatIds(dir: string, be?: Backend<Tensor>): number[][] {
  return eqatGreedyIds(dir, promptIds(dir), newTokens, be);
}

/** llama.cpp's greedy continuations of eqat's prompt ids (its tokenization of the prompts is the same; test/conformance checks it), up to an eos. */
function llamaCppIds(dir: string, gguf: string, settings: LlamaCppContextSettings): Promise<number[][]> {
  return llamaCppGreedyIds(llamaCpp.llama!, gguf, promptIds(dir), newTokens, loadConfig(dir).eosTokenIds, settings);
}


/** Prompts whose continuation (ids or text) equals the reference's, and the mean share of the reference reproduced before the first difference. */
function agreement<T extends string | number[]>(got: T[], want: T[]): string {
  let same = 0;
  let share = 0;
  for (let i = 0; i < want.length; i++) {
    const a = got[i]!;
    const b = want[i]!;
    if (JSON.stringify(a) === JSON.stringify(b)) same++;
    else if (process.env['EQAT_BENCH_SHOW']) console.error(`${JSON.stringify(prompts[i])}: ${JSON.stringify(a)} vs ${JSON.stringify(b)}`);
    let k = 0;
    while (k < a.length && k < b.length && a[k] === b[k]) k++;
    share += b.length === 0 ? 1 : k / b.length;
  }
  return `${same}/${want.length} | ${((100 * share) / want.length).toFixed(1)}%`;
}

const lines: string[] = [];
try {
  for (const [i, row] of rows.entries()) {
    const tag = `m${i}`;
    const gguf = await exportGguf(row.dir, join(work, `${tag}.gguf`));
    const want = eqatIds(row.dir);
    const tok = loadTokenizer(row.dir);
    const wantText = want.map((ids) => tok.decode(ids, { skipSpecialTokens: true }));
    const cell = <T extends string | number[]>(run: string, heldTo: string, got: T[] | null, reference: T[]): void => {
      lines.push(`| ${row.model} | ${run} | ${heldTo} | ${got ? agreement(got, reference) : 'skipped | —'} |`);
    };
    const integer = Object.keys(gguf.types).find((t) => t.startsWith('Q')) ?? '?';
    if (llamaCpp.llama) {
      cell(`llama.cpp ${integer}, defaults (f16 kv)`, 'eqat generate (ids)', await llamaCppIds(row.dir, gguf.path, {}), want);
      const rounded = eqatIds(row.dir, llamaCppArithmetic(ggufHeadType(gguf.types)));
      cell(`llama.cpp ${integer}, f32 kv`, "eqat with llama.cpp's rounding (ids)", await llamaCppIds(row.dir, gguf.path, LLAMA_CPP_F32_CACHE), rounded);
      const f32 = await exportGguf(row.dir, join(work, `${tag}-f32.gguf`), { type: 'f32', embeddingType: 'f32' });
      cell('llama.cpp F32, f32 kv', 'eqat generate (ids)', await llamaCppIds(row.dir, f32.path, LLAMA_CPP_F32_CACHE), want);
    } else {
      cell('llama.cpp', 'eqat generate', null, want);
    }
    const onnx = await exportOnnx(row.dir, join(work, `${tag}-onnx`));
    cell('transformers.js', 'eqat generate (text)', tjs ? await tjsGreedyTexts(tjs, onnx.dir, prompts, newTokens) : null, wantText);
    console.error(`bench/export-greedy: ${row.model} done`);
  }
} finally {
  await llamaCpp.llama?.dispose();
  rmSync(work, { recursive: true, force: true });
}

const loadAfter = loadavg()[0]!;
const cpu = cpus();
let commit = 'unknown commit';
try {
  commit = `commit ${execFileSync('git', ['rev-parse', '--short', 'HEAD'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim()}`;
} catch {
  // not a git checkout
}
console.log(`# Greedy text of the exports (${cpu[0]?.model ?? 'cpu'}, ${cpu.length} threads), ${new Date().toISOString()}, ${commit}`);
console.log('');
console.log(`\`${command}\``);
console.log('');
console.log(`${prompts.length} prompts (the first 8 words of wikitext2-test paragraphs), up to ${newTokens} new tokens each, temperature 0.`);
if (llamaCpp.skip) console.log(`llama.cpp: ${llamaCpp.skip}.`);
if (!tjs) console.log('transformers.js: not installed.');
console.log(`1-minute load average ${loadBefore.toFixed(2)} at the start, ${loadAfter.toFixed(2)} at the end.`);
console.log('');
console.log('| checkpoint | run | held to | same continuation | reproduced before departing |');
console.log('|---|---|---|---|---|');
for (const l of lines) console.log(l);
