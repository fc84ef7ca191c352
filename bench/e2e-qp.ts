// E2E-QP acceptance benchmark on ../shared/models/llama-small: starting from the Block-AP
// checkpoints that `node dist/bench/block-ap.js --keep DIR` leaves in DIR/<config>, run
// `eqat e2e-qp` (1024 samples × 512 tokens of ../shared/data/calib.txt, global batch 32, 1 epoch,
// paper lr / warmup / clipping) and `eqat eval --seqlen 512` on ../shared/data/test-mix.txt.
// Reports perplexity before (Block-AP) and after, next to the official implementation, with
// wall time, peak RSS, and the size of the packed model against a dense f32 copy (which
// E2E-QP never builds).
//
// usage: node dist/bench/e2e-qp.js --from DIR [--micro-batch N] [--warmup-ratio R] [config ...]
//        configs: w2g64 w3g128 w4g128 (default: all); a suffix such as w2g64-seed3 names
//        another Block-AP checkpoint of the same config. --warmup-ratio replaces the recipe's 3%
//        (0: no warmup, as the official script runs under transformers >= 5.2); the E2E-QP
//        checkpoint goes to DIR/../e2e/<config>, or <config>-warmupR with the flag.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { cpus } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../src/engine/native.js';

const ROOT = packageRoot();
const SHARED = join(ROOT, '..', 'shared');
const CALIB = join(SHARED, 'data', 'calib.txt');
const TEST = join(SHARED, 'data', 'test-mix.txt');
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');
const OFFICIAL: Record<string, { bap: number; e2e: number }> = {
  w2g64: { bap: 50.09, e2e: 45.48 },
  w3g128: { bap: 41.59, e2e: 38.84 },
  w4g128: { bap: 40.3, e2e: 35.87 },
};

function run(args: string[]): Record<string, unknown> {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`eqat ${args[0]} failed (${r.status})`);
  const lines = r.stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
}

const argv = process.argv.slice(2);
const take = (flag: string): string | null => {
  const i = argv.indexOf(flag);
  return i >= 0 ? argv.splice(i, 2)[1]! : null;
};
const from = take('--from');
const micro = take('--micro-batch') ?? '4';
const warmup = take('--warmup-ratio');
const configs = argv.length ? argv : Object.keys(OFFICIAL);
/** The official figures of a config name, the part before any -suffix (w2g64-seed3 → w2g64). */
function officialOf(c: string): { bap: number; e2e: number } {
  const o = OFFICIAL[c.split('-')[0]!];
  if (!o) throw new Error(`bench/e2e-qp: unknown config ${c} (expected w2g64, w3g128 or w4g128, optionally with a -suffix)`);
  return o;
}
configs.forEach(officialOf); // refuse a bad name before any run
if (!from || !existsSync(CALIB)) {
  console.log('bench/e2e-qp: needs --from DIR (Block-AP checkpoints) and ../shared/data; skipping');
  process.exit(0);
}
const outRoot = join(from, '..', 'e2e');
mkdirSync(outRoot, { recursive: true });
console.log(`# E2E-QP on llama-small (${cpus()[0]?.model ?? 'cpu'}, ${cpus().length} threads), warmup ratio ${warmup ?? 'default'}, ${new Date().toISOString()}`);
console.log('| config | Block-AP ppl | E2E-QP ppl | drop | official Block-AP → E2E-QP | eqat / official | E2E-QP wall s | peak RSS MiB | packed MiB | dense f32 MiB |');
console.log('|---|---|---|---|---|---|---|---|---|---|');
for (const c of configs) {
  const o = officialOf(c);
  const bap = join(from, c);
  const out = join(outRoot, warmup === null ? c : `${c}-warmup${warmup}`);
  const e = run([
    'e2e-qp', '--model', bap, '--data', CALIB, '--out', out, '--train-size', '1024', '--seqlen', '512',
    '--batch-size', '32', '--micro-batch-size', micro, '--epochs', '1', '--quiet', '--json',
    ...(warmup === null ? [] : ['--warmup-ratio', warmup]),
  ]);
  // E2E-QP first: a --warmup-ratio the CLI refuses fails before any evaluation
  const before = run(['eval', '--model', bap, '--data', TEST, '--seqlen', '512', '--json'])['ppl'] as number;
  const after = run(['eval', '--model', out, '--data', TEST, '--seqlen', '512', '--json'])['ppl'] as number;
  const cfg = JSON.parse(readFileSync(join(bap, 'config.json'), 'utf8')) as { num_hidden_layers: number; hidden_size: number; intermediate_size: number; num_attention_heads: number; num_key_value_heads: number; head_dim?: number };
  const D = cfg.head_dim ?? cfg.hidden_size / cfg.num_attention_heads;
  const perBlock = cfg.hidden_size * (cfg.num_attention_heads * D * 2 + cfg.num_key_value_heads * D * 2) + 3 * cfg.hidden_size * cfg.intermediate_size;
  const denseMiB = (cfg.num_hidden_layers * perBlock * 4) / 2 ** 20;
  console.log(
    `| ${c} | ${before.toFixed(2)} | ${after.toFixed(2)} | ${(before - after).toFixed(2)} | ${o.bap} → ${o.e2e} (drop ${(o.bap - o.e2e).toFixed(2)}) | ${(after / o.e2e).toFixed(4)} | ${(e['seconds'] as number).toFixed(0)} | ${e['peakRssMiB']} | ${((e['packedBytes'] as number) / 2 ** 20).toFixed(1)} | ${denseMiB.toFixed(1)} |`,
  );
}
