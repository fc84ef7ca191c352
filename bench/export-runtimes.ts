// Export benchmark: eqat quantized checkpoints exported to GGUF (automatic, exact types) and
// ONNX, then scored on the whole of ../shared/data/test-mix.txt at seqlen 512 by eqat
// (src/pipeline/eval.ts windowsNll), by llama.cpp through node-llama-cpp and by
// onnxruntime-node, each from its own logits on the same windows (the whole file tokenized
// without special tokens, non-overlapping 512-token windows, remainder dropped). Prints a
// markdown table: perplexities, runtime / eqat ratios (acceptance: within 1% for llama.cpp,
// 0.5% for onnxruntime), GGUF types and size, and each runtime's wall seconds.
//
// usage: node dist/bench/export-runtimes.js [--model QUANT_DIR ...] [--threads N]
//   --model DIR  an eqat quantized checkpoint (GPTQ v2 directory, as `eqat block-ap` / `eqat
//                e2e-qp` write it); repeatable. It is only read: exports go to a temporary
//                directory. Without --model: ../shared/models/llama-small quantized by
//                round-to-nearest (Block-AP --epochs 0) at w2g64, w3g128 and w4g128.
//   --threads N  threads for llama.cpp and onnxruntime (default: 1 for llama.cpp, which runs 4
//                sequences at once and reads logits on other threads; 2 for onnxruntime).
// Exits 0 with a message when ../shared (or $EQAT_SHARED_DIR) lacks test-mix.txt, or lacks
// llama-small when no --model is given. A runtime that is not installed is reported as skipped.
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { exportGguf } from '../src/export/gguf.js';
import { exportOnnx } from '../src/export/onnx.js';
import { windowsNll } from '../src/pipeline/eval.js';
import { evalWindows } from '../src/data/windows.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { WeightSource } from '../src/model/weights.js';
import { decoderDims, llamaCppPerplexity, loadLlamaCpp, loadOrt, ortPerplexity, sharedPath } from '../test/export/runtimes.js';
import { writeRtn } from '../test/golden.js';

const T = 512;
const argv = process.argv.slice(2);
const sharedEnv = process.env['EQAT_SHARED_DIR'];
const command = `${sharedEnv ? `EQAT_SHARED_DIR=${sharedEnv} ` : ''}node dist/bench/export-runtimes.js${argv.length ? ' ' + argv.join(' ') : ''}`;
const models: string[] = [];
let threadsArg: number | null = null;
for (let i = 0; i < argv.length; i++) {
  const a = argv[i]!;
  if (a === '--model' && argv[i + 1]) models.push(resolve(argv[++i]!));
  else if (a === '--threads' && argv[i + 1]) threadsArg = Number(argv[++i]);
  else {
    console.error(`bench/export-runtimes: unknown argument ${JSON.stringify(a)}\nusage: node dist/bench/export-runtimes.js [--model QUANT_DIR ...] [--threads N]`);
    process.exit(2);
  }
}
if (threadsArg !== null && !(Number.isInteger(threadsArg) && threadsArg >= 1)) {
  console.error(`bench/export-runtimes: --threads must be a positive integer, got ${threadsArg}`);
  process.exit(2);
}
const llamaThreads = threadsArg ?? 1;
const ortThreads = threadsArg ?? 2;

const testMixPath = sharedPath('data/test-mix.txt');
const smallGolden = sharedPath('models/llama-small/golden.json');
if (!testMixPath || (models.length === 0 && !smallGolden)) {
  console.log('bench/export-runtimes: ../shared/data/test-mix.txt (and, without --model, ../shared/models/llama-small) not present; skipping');
  process.exit(0);
}
const testMix: string = testMixPath;
for (const m of models) {
  for (const f of ['config.json', 'model.safetensors.index.json']) {
    if (!existsSync(join(m, f)) && !(f.endsWith('index.json') && existsSync(join(m, 'model.safetensors')))) {
      console.error(`bench/export-runtimes: ${m} is not a complete eqat checkpoint (no ${f})`);
      process.exit(2);
    }
  }
}

const work = mkdtempSync(join(tmpdir(), 'eqat-bench-export-'));
process.env['EQAT_CACHE_DIR'] ??= join(work, 'token-cache');
const llamaCpp = await loadLlamaCpp();
const { ort, skip: ortSkip } = await loadOrt();
const loadBefore = loadavg()[0]!;

interface Row {
  model: string;
  dir: string;
}
const rows: Row[] = models.map((m) => ({ model: m, dir: m }));
if (models.length === 0) {
  const small = dirname(smallGolden!);
  for (const [bits, group] of [
    [2, 64],
    [3, 128],
    [4, 128],
  ] as const) {
    const out = join(work, `rtn-w${bits}g${group}`);
    await writeRtn(small, out, bits, group);
    rows.push({ model: `llama-small RTN`, dir: out });
  }
}

const windowsCache = new Map<string, { windows: Int32Array; count: number }>();
function windowsFor(dir: string): { windows: Int32Array; count: number } {
  const key = readFileSync(join(dir, 'tokenizer.json'), 'utf8');
  let w = windowsCache.get(key);
  if (!w) {
    w = evalWindows(readFileSync(testMix, 'utf8'), loadTokenizer(dir), T);
    windowsCache.set(key, w);
  }
  return w;
}

const fmt = (x: number, d = 2): string => x.toFixed(d);
const lines: string[] = [];
try {
  for (const [i, row] of rows.entries()) {
    const tag = `m${i}-${basename(row.dir)}`;
    const gguf = await exportGguf(row.dir, join(work, `${tag}.gguf`));
    const onnx = await exportOnnx(row.dir, join(work, `${tag}-onnx`));
    const { windows, count } = windowsFor(row.dir);
    const t0 = performance.now();
    const src = WeightSource.open(row.dir);
    let eqatNll: number;
    try {
      eqatNll = windowsNll(src, windows, count, T, { quiet: true }).nll;
    } finally {
      src.close();
    }
    const eqatSeconds = (performance.now() - t0) / 1000;
    const eqatPpl = Math.exp(eqatNll);
    let llamaCells = ['skipped', '—', '—'];
    if (llamaCpp.llama) {
      const r = await llamaCppPerplexity(llamaCpp.llama, gguf.path, windows, count, T, { threads: llamaThreads, sequences: 4 });
      llamaCells = [fmt(r.ppl), (r.ppl / eqatPpl).toFixed(5), fmt(r.seconds, 1)];
    }
    let ortCells = ['skipped', '—', '—'];
    if (ort) {
      const r = await ortPerplexity(ort, onnx.onnxPath, decoderDims(onnx.dir), windows, count, T, { threads: ortThreads, batch: 8 });
      ortCells = [fmt(r.ppl), (r.ppl / eqatPpl).toFixed(5), fmt(r.seconds, 1)];
    }
    const types = Object.entries(gguf.types)
      .map(([k, v]) => `${k}×${v}`)
      .join(' ');
    lines.push(
      `| ${row.model} | w${onnx.checkpointBits}g${onnx.groupSize} | ${types}${gguf.exact ? '' : ' (lossy)'} | ${gguf.bytes} | ${fmt(eqatPpl)} | ${llamaCells[0]} | ${llamaCells[1]} | ${ortCells[0]} | ${ortCells[1]} | ${fmt(eqatSeconds, 1)} | ${llamaCells[2]} | ${ortCells[2]} |`,
    );
    console.error(`bench/export-runtimes: ${row.model} done (${count} windows)`);
  }
} finally {
  await llamaCpp.llama?.dispose();
  rmSync(work, { recursive: true, force: true });
}

const loadAfter = loadavg()[0]!;
const cpu = cpus();
console.log(
  `# Export runtimes on test-mix.txt at seqlen ${T} (${cpu[0]?.model ?? 'cpu'}, ${cpu.length} threads; llama.cpp ${llamaThreads} thread(s) × 4 sequences, onnxruntime ${ortThreads} thread(s)), ${new Date().toISOString()}`,
);
console.log('');
console.log(`\`${command}\``);
console.log('');
if (llamaCpp.skip) console.log(`llama.cpp: ${llamaCpp.skip}.`);
if (ortSkip) console.log(`onnxruntime: ${ortSkip}.`);
if (Math.max(loadBefore, loadAfter) > 2) {
  console.log(`The machine was shared with other jobs (1-minute load average ${fmt(loadBefore)} at the start, ${fmt(loadAfter)} at the end): seconds are not those of an idle machine.`);
}
console.log('');
console.log('| model | bits/group | GGUF types | GGUF bytes | ppl eqat | ppl llama.cpp | llama.cpp / eqat | ppl onnxruntime | onnxruntime / eqat | eqat s | llama.cpp s | onnxruntime s |');
console.log('|---|---|---|---|---|---|---|---|---|---|---|---|');
for (const l of lines) console.log(l);
