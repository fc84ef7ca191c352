// Greedy generation speed on the CPU: decoding over the key/value cache (generateIdsCached, what
// `eqat generate` runs) against running the whole prefix again for every new token
// (generateIds on Model), for ../shared/models/llama-small (or a model directory given as
// the first argument). Both must produce the same tokens. Median of 3 timed runs after a warm-up.
//
// usage: node dist/bench/generate.js [MODEL_DIR] [--prompt P] [--new N] [--threads N]
import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { packageRoot, native } from '../src/engine/native.js';
import { WeightSource } from '../src/model/weights.js';
import { Model } from '../src/model/model.js';
import { Rng } from '../src/engine/random.js';
import { generateIds, generateIdsCached } from '../src/pipeline/generate.js';

const args = process.argv.slice(2);
const take = (flag: string, fallback: number): number => {
  const i = args.indexOf(flag);
  return i >= 0 ? Number(args.splice(i, 2)[1]) : fallback;
};
const threads = take('--threads', 0);
if (threads > 0) native().setThreads(threads);
const promptLen = take('--prompt', 32);
const newTokens = take('--new', 224);
const dir = args[0] ?? join(packageRoot(), '..', 'shared', 'models', 'llama-small');
if (!existsSync(join(dir, 'config.json'))) {
  console.log(`bench/generate: ${dir} not present; skipping`);
  process.exit(0);
}
const src = WeightSource.open(dir);
const model = Model.load(src);
src.close();
const rng = new Rng(3);
const prompt = Array.from({ length: promptLen }, () => Math.floor(rng.next() * model.cfg.vocabSize));
const opts = { maxNewTokens: newTokens }; // greedy, no stop at end of sequence

function median(fn: () => number[]): { ms: number; ids: number[] } {
  let ids = fn(); // warm-up
  const times: number[] = [];
  for (let r = 0; r < 3; r++) {
    const t0 = performance.now();
    ids = fn();
    times.push(performance.now() - t0);
  }
  times.sort((a, b) => a - b);
  return { ms: times[1]!, ids };
}

const cached = median(() => generateIdsCached(model, prompt, opts));
const full = median(() => generateIds(model, prompt, opts));
const same = cached.ids.length === full.ids.length && cached.ids.every((id, i) => id === full.ids[i]);
if (!same) throw new Error('bench/generate: the cached and full-prefix generations differ');
const rate = (ms: number): string => ((newTokens / ms) * 1000).toFixed(1);
console.log(`# ${dir}: prompt ${promptLen} + ${newTokens} greedy tokens, ${threads || cpus().length} threads; identical tokens`);
console.log('| kv cache (ms, tokens/s) | full prefix (ms, tokens/s) | speed-up |');
console.log('|---|---|---|');
console.log(`| ${cached.ms.toFixed(0)}, ${rate(cached.ms)} | ${full.ms.toFixed(0)}, ${rate(full.ms)} | ${(full.ms / cached.ms).toFixed(1)}x |`);
