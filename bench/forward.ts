// Forward throughput of a full model on CPU: tokens/s of the f32 forward (embedding, blocks,
// final norm, lm_head) at seqlen 512, batch 4 windows, for ../shared/models/llama-small
// (or a model directory given as the first argument). Median of 5 timed runs after a warm-up.
//
// usage: node dist/bench/forward.js [MODEL_DIR] [--threads N]
import { existsSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { packageRoot, native } from '../src/engine/native.js';
import { WeightSource } from '../src/model/weights.js';
import { Model } from '../src/model/model.js';
import { Rng } from '../src/engine/random.js';

const args = process.argv.slice(2);
const ti = args.indexOf('--threads');
if (ti >= 0) {
  native().setThreads(Number(args[ti + 1]));
  args.splice(ti, 2);
}
const dir = args[0] ?? join(packageRoot(), '..', 'shared', 'models', 'llama-small');
if (!existsSync(join(dir, 'config.json'))) {
  console.log(`bench/forward: ${dir} not present; skipping`);
  process.exit(0);
}
const src = WeightSource.open(dir);
const model = Model.load(src);
src.close();
const B = 4;
const T = 512;
const rng = new Rng(1);
const ids = new Int32Array(B * T).map(() => rng.int(0, model.cfg.vocabSize));
model.forward(ids, B, T);
const times: number[] = [];
for (let r = 0; r < 5; r++) {
  const t0 = performance.now();
  model.forward(ids, B, T);
  times.push((performance.now() - t0) / 1000);
}
times.sort((a, b) => a - b);
const med = times[2]!;
console.log(
  `forward ${dir.split('/').pop()} B=${B} T=${T}: ${(B * T / med).toFixed(0)} tokens/s (median ${(med * 1000).toFixed(0)} ms; ` +
    `${native().cpuInfo().threads} threads, ${cpus()[0]?.model ?? ''}, ${new Date().toISOString().slice(0, 10)})`,
);
