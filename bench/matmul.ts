// Matmul throughput benchmark: GFLOP/s (2*M*N*K / time, median of several timed reps after a
// warm-up) of the native f32 matmul for the square and training-sized shapes, every transpose
// combination, on 1 and 2 threads; printed as a markdown table (results: bench/results-matmul.md).
//
//   node dist/bench/matmul.js [--reps N] [--threads 1,2] [--kernel auto|avx2|scalar|...] [--quick]
//
// Op names: NN = a @ b, NT = a @ bᵀ (linear forward), TN = aᵀ @ b (weight gradient), TT = aᵀ @ bᵀ.
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { native, nativeFn } from '../src/engine/native.js';
import { Rng } from '../src/engine/random.js';
import { Tensor } from '../src/engine/tensor.js';
import { matmul, matmulKernel, setMatmulKernel, type MatmulKernelName } from '../src/ops/matmul.js';

interface Case {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  note: string;
}

function opName(transA: boolean, transB: boolean): string {
  return (transA ? 'T' : 'N') + (transB ? 'T' : 'N');
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(name);
  return i >= 0 && i + 1 < process.argv.length ? process.argv[i + 1]! : fallback;
}

function cpuModel(): string {
  try {
    const m = /^model name\s*:\s*(.*)$/m.exec(readFileSync('/proc/cpuinfo', 'utf8'));
    return m ? m[1]!.trim() : 'unknown';
  } catch {
    return 'unknown';
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((p, q) => p - q);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

const quick = process.argv.includes('--quick');
const reps = Number(arg('--reps', quick ? '3' : '5'));
const threadCounts = arg('--threads', '1,2').split(',').map(Number);
const kernelName = arg('--kernel', 'auto') as MatmulKernelName;
setMatmulKernel(kernelName);

const all: [boolean, boolean][] = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
];
const cases: Case[] = [];
for (const [transA, transB] of all) cases.push({ M: 1024, N: 1024, K: 1024, transA, transB, note: 'square' });
if (!quick) for (const [transA, transB] of all) cases.push({ M: 4096, N: 4096, K: 1024, transA, transB, note: 'large' });
// llama-small-like linear layers (tokens 1024, hidden 384, MLP 1024): forward (NT), input
// gradient (NN), weight gradient (TN).
cases.push({ M: 1024, N: 1024, K: 384, transA: false, transB: true, note: 'up-proj forward' });
cases.push({ M: 1024, N: 384, K: 1024, transA: false, transB: true, note: 'down-proj forward' });
cases.push({ M: 1024, N: 384, K: 1024, transA: false, transB: false, note: 'up-proj dX' });
cases.push({ M: 1024, N: 1024, K: 384, transA: false, transB: false, note: 'down-proj dX' });
cases.push({ M: 1024, N: 384, K: 1024, transA: true, transB: false, note: 'up-proj dW' });
cases.push({ M: 384, N: 1024, K: 1024, transA: true, transB: false, note: 'down-proj dW' });
// Generation: a few rows against a large weight (memory bound).
cases.push({ M: 1, N: 4096, K: 4096, transA: false, transB: true, note: 'generation, 1 row' });
cases.push({ M: 8, N: 4096, K: 4096, transA: false, transB: true, note: 'generation, 8 rows' });

const rng = new Rng(42);
const PROBE_MS = 150;
const fmaPeak = nativeFn<(ms: number) => number>('matmulFmaPeak');
const info = native().cpuInfo();
const lines: string[] = [];
lines.push(`# matmul benchmark`);
lines.push('');
lines.push(`- machine: ${cpuModel()} (${info.avx512 ? 'AVX-512' : info.avx2 ? 'AVX2/FMA' : 'no AVX2'}, ${cpus().length} logical CPUs, pool of ${info.threads} threads)`);
lines.push(`- kernel: ${matmulKernel()}`);
lines.push(`- date: ${new Date().toISOString()}`);
lines.push(`- command: node dist/bench/matmul.js ${process.argv.slice(2).join(' ')}`.trimEnd());
lines.push(`- load average at start: ${loadavg().map((x) => x.toFixed(2)).join(', ')}`);
lines.push(`- GFLOP/s = 2·M·N·K / wall time, median of ${reps} reps after one warm-up call.`);
lines.push(`- peak: bare multiply-add chains on the same vector unit and threads (matmulFmaPeak), measured for`);
lines.push(`  ${PROBE_MS} ms right before each case, so "% of peak" stays meaningful when other processes share the CPUs.`);
lines.push(`- per CPU-s: the same flops over the process CPU time (≈ GFLOP/s ÷ threads on an idle machine;`);
lines.push(`  higher means the run was starved of CPU by other processes).`);
lines.push('');
lines.push('| M × N × K | op | case | threads | ms | GFLOP/s | peak GFLOP/s | % of peak | GFLOP per CPU-s |');
lines.push('|---|---|---|---:|---:|---:|---:|---:|---:|');
console.log(lines.join('\n'));

// Largest thread count first: the pool is only ever shrunk (growing it again after a parallel
// region has run is unsafe with the current thread pool).
const ordered = [...threadCounts].sort((p, q) => q - p);
let current = info.threads;
for (const t of ordered) {
  if (t !== current) {
    native().setThreads(t);
    current = t;
  }
  for (const c of cases) {
    const a = Tensor.zeros(c.transA ? [c.K, c.M] : [c.M, c.K]);
    const b = Tensor.zeros(c.transB ? [c.N, c.K] : [c.K, c.N]);
    const out = Tensor.zeros([c.M, c.N]);
    rng.fillNormal(a.f32);
    rng.fillNormal(b.f32);
    const flops = 2 * c.M * c.N * c.K;
    const opts = { transA: c.transA, transB: c.transB };
    matmul(out, a, b, opts); // warm-up: page faults, pack buffers, caches
    const peak = fmaPeak(PROBE_MS);
    // Small cases: repeat inside each timed rep so a rep lasts a few ms.
    const inner = Math.max(1, Math.round(2e8 / flops));
    const times: number[] = [];
    const cpuTimes: number[] = [];
    for (let r = 0; r < reps; r++) {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      for (let i = 0; i < inner; i++) matmul(out, a, b, opts);
      times.push((performance.now() - t0) / inner);
      const used = process.cpuUsage(c0);
      cpuTimes.push((used.user + used.system) / 1000 / inner);
    }
    const ms = median(times);
    const cpuMs = median(cpuTimes);
    console.log(
      `| ${c.M} × ${c.N} × ${c.K} | ${opName(c.transA, c.transB)} | ${c.note} | ${t} | ${ms.toFixed(2)} | ` +
        `${(flops / ms / 1e6).toFixed(1)} | ${peak.toFixed(1)} | ${((100 * flops) / ms / 1e6 / peak).toFixed(0)}% | ` +
        `${(flops / cpuMs / 1e6).toFixed(1)} |`,
    );
  }
}
