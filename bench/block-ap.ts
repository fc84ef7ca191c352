// Block-AP acceptance benchmark on ../shared/models/llama-small: for each configuration,
// `eqat block-ap` (train 1024 × 512 tokens, val 64, batch 2, 2 epochs; or RTN with --epochs 0)
// then `eqat eval --seqlen 512` on ../shared/data/test-mix.txt. Each run is its own process;
// wall time and peak RSS come from the CLI's --json summary. Prints a markdown table next to
// the official implementation's figures.
//
// usage: node dist/bench/block-ap.js [--keep DIR] [config ...]   configs: rtn-w2g64 rtn-w3g128
//        rtn-w4g128 w2g64 w3g128 w4g128 (default: all), each optionally with a -seedN suffix
//        (w2g64-seed3: the same run with sampling seed N instead of 2). --keep DIR keeps the
//        checkpoints (DIR/<config>) for later phases instead of deleting them.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, rmSync, readFileSync } from 'node:fs';
import { cpus, tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../src/engine/native.js';

const ROOT = packageRoot();
const SHARED = join(ROOT, '..', 'shared');
const MODEL = join(SHARED, 'models', 'llama-small');
const CALIB = join(SHARED, 'data', 'calib.txt');
const TEST = join(SHARED, 'data', 'test-mix.txt');
const CLI = join(ROOT, 'dist', 'src', 'cli', 'main.js');

interface Config {
  name: string;
  bits: number;
  group: number;
  epochs: number;
  seed: number;
  official: number | null;
  golden?: string;
}

const CONFIGS: Config[] = [
  { name: 'rtn-w2g64', bits: 2, group: 64, epochs: 0, seed: 2, official: 104.7, golden: 'w2g64' },
  { name: 'rtn-w3g128', bits: 3, group: 128, epochs: 0, seed: 2, official: 46.42, golden: 'w3g128' },
  { name: 'rtn-w4g128', bits: 4, group: 128, epochs: 0, seed: 2, official: 41.04, golden: 'w4g128' },
  { name: 'w2g64', bits: 2, group: 64, epochs: 2, seed: 2, official: 50.09 },
  { name: 'w3g128', bits: 3, group: 128, epochs: 2, seed: 2, official: 41.59 },
  { name: 'w4g128', bits: 4, group: 128, epochs: 2, seed: 2, official: 40.3 },
];

function lastJson(stdout: string): Record<string, unknown> {
  const lines = stdout.trim().split('\n');
  return JSON.parse(lines[lines.length - 1]!) as Record<string, unknown>;
}

function run(args: string[]): Record<string, unknown> {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
  if (r.status !== 0) throw new Error(`eqat ${args[0]} failed (${r.status})`);
  return lastJson(r.stdout);
}

const argv = process.argv.slice(2);
const ki = argv.indexOf('--keep');
const keep = ki >= 0 ? argv.splice(ki, 2)[1]! : null;
const want = argv;
/** A config by name; `<config>-seedN` is that config with sampling seed N. */
function configNamed(name: string): Config {
  const m = /^(.*)-seed(\d+)$/.exec(name);
  const base = CONFIGS.find((c) => c.name === (m ? m[1] : name));
  if (!base) throw new Error(`bench/block-ap: unknown config ${name} (expected one of ${CONFIGS.map((c) => c.name).join(', ')}, optionally with -seedN)`);
  return m ? { ...base, name, seed: Number(m[2]) } : base;
}
const selected = want.length ? want.map(configNamed) : CONFIGS;
if (!existsSync(MODEL) || !existsSync(CALIB)) {
  console.log('bench/block-ap: ../shared/models/llama-small or ../shared/data not present; skipping');
  process.exit(0);
}
const golden = JSON.parse(readFileSync(join(MODEL, 'golden.json'), 'utf8')) as { rtn_ppl_fp32_seq512_test_mix: Record<string, number> };
const work = keep ?? mkdtempSync(join(tmpdir(), 'eqat-bench-'));
const rows: string[] = [];
console.log(`# Block-AP on llama-small (${cpus()[0]?.model ?? 'cpu'}, ${cpus().length} threads), ${new Date().toISOString()}`);
console.log('| config | eqat ppl | official ppl | eqat / official | golden RTN | Block-AP wall s | peak RSS MiB | eval s |');
console.log('|---|---|---|---|---|---|---|---|');
for (const c of selected) {
  const out = join(work, c.name);
  const bap = run([
    'block-ap', '--model', MODEL, '--calib', CALIB, '--out', out, '--wbits', String(c.bits), '--group-size', String(c.group),
    '--train-size', '1024', '--val-size', '64', '--seqlen', '512', '--batch-size', '2', '--epochs', String(c.epochs),
    '--seed', String(c.seed), '--quiet', '--json',
  ]);
  const ev = run(['eval', '--model', out, '--data', TEST, '--seqlen', '512', '--json']);
  const ppl = ev['ppl'] as number;
  const g = c.golden ? golden.rtn_ppl_fp32_seq512_test_mix[c.golden]! : null;
  const row = `| ${c.name} | ${ppl.toFixed(2)} | ${c.official ?? '-'} | ${c.official ? (ppl / c.official).toFixed(4) : '-'} | ${g ? g.toFixed(2) : '-'} | ${(bap['seconds'] as number).toFixed(0)} | ${bap['peakRssMiB']} | ${(ev['seconds'] as number).toFixed(0)} |`;
  rows.push(row);
  console.log(row);
  if (!keep) rmSync(out, { recursive: true, force: true });
}
if (!keep) rmSync(work, { recursive: true, force: true });
