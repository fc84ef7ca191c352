// Packed low-bit linear benchmark: GFLOP/s of packedLinearForward, the dx part and the dscales
// part of packedLinearBackward (2·N·O·I flops each), next to the f32 matmul on the same shapes
// (forward x @ Wᵀ, dx = dout @ W, dW = doutᵀ @ x), for llama-small layers and a 7B-like
// 4096 × 4096 layer; printed as a markdown table. The two are timed alternately, rep by rep,
// so load from other processes hits both alike; the FMA peak probe (matmulFmaPeak) is taken
// right before each shape.
//
//   node dist/bench/qlinear.js [--n 1024] [--bits 4] [--reps 5] [--threads 2,1] [--large] [--quick]
//
// --large adds the 11008 × 4096 (MLP) layer; --quick keeps only two llama-small shapes.
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { performance } from 'node:perf_hooks';
import { native, nativeFn } from '../src/engine/native.js';
import { Rng } from '../src/engine/random.js';
import { Tensor } from '../src/engine/tensor.js';
import { matmul, matmulKernel } from '../src/ops/matmul.js';
import { packWeight, packedLinearBackward, packedLinearForward, type PackedWeight } from '../src/quant/packed-linear.js';

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

interface Shape {
  O: number;
  I: number;
  note: string;
}

const quick = process.argv.includes('--quick');
const N = Number(arg('--n', '1024'));
const bitsList = arg('--bits', '4').split(',').map(Number);
const reps = Number(arg('--reps', quick ? '3' : '5'));
const threadCounts = arg('--threads', '2').split(',').map(Number);
const G = Number(arg('--group', '128'));

const shapes: Shape[] = [
  { O: 384, I: 384, note: 'llama-small q/k/v/o' },
  { O: 1024, I: 384, note: 'llama-small gate/up' },
];
if (!quick) {
  shapes.push({ O: 128, I: 384, note: 'llama-small k/v (GQA)' });
  shapes.push({ O: 384, I: 1024, note: 'llama-small down' });
  shapes.push({ O: 4096, I: 4096, note: '7B q/k/v/o' });
}
if (process.argv.includes('--large')) shapes.push({ O: 11008, I: 4096, note: '7B gate/up' });

const rng = new Rng(3);
const PROBE_MS = 150;
const fmaPeak = nativeFn<(ms: number) => number>('matmulFmaPeak');
const info = native().cpuInfo();

const lines: string[] = [];
lines.push('# packed low-bit linear benchmark');
lines.push('');
const isa = info.avx512 ? 'AVX-512' : info.avx2 ? 'AVX2/FMA' : 'no AVX2';
lines.push(`- machine: ${cpuModel()} (${isa}, ${cpus().length} logical CPUs, pool of ${info.threads} threads)`);
lines.push(`- GEMM kernel: ${matmulKernel()}; N = ${N} rows; group size ${G}`);
lines.push(`- date: ${new Date().toISOString()}`);
lines.push(`- command: node dist/bench/qlinear.js ${process.argv.slice(2).join(' ')}`.trimEnd());
lines.push(`- load average at start: ${loadavg().map((x) => x.toFixed(2)).join(', ')}`);
lines.push(`- Each cell: GFLOP/s / GFLOP per CPU-s. GFLOP/s = 2·N·O·I / wall time, median of ${reps} reps after a`);
lines.push(`  warm-up; per CPU-s: the same flops over the process CPU time (≈ GFLOP/s ÷ threads on an idle machine,`);
lines.push('  higher when other processes starve the run). Packed and f32 are timed alternately, rep by rep.');
lines.push('- peak: bare FMA chains on the same threads (matmulFmaPeak, GFLOP/s), measured right before each row.');
lines.push('');
lines.push('| O × I | layer | bits | threads | peak | fwd packed | fwd f32 | dx packed | dx f32 | dscales packed | dW f32 |');
lines.push('|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
console.log(lines.join('\n'));

function randomWeight(O: number, I: number, bits: number): PackedWeight {
  const qm = 2 ** bits - 1;
  const q = new Uint8Array(O * I);
  for (let k = 0; k < q.length; k++) q[k] = rng.int(0, qm + 1);
  const z = new Uint8Array((O * I) / G);
  for (let k = 0; k < z.length; k++) z[k] = rng.int(0, qm + 1);
  return packWeight(q, z, O, I, bits, G);
}

/** Median wall ms and CPU ms (process user + system) per call of each function, timed alternately rep by rep. */
function timeAlternating(fns: (() => void)[], flops: number): { wall: number; cpu: number }[] {
  const inner = Math.max(1, Math.round(1e8 / flops));
  for (const f of fns) f(); // warm-up: page faults, scratch, caches
  const wall = fns.map(() => [] as number[]);
  const cpu = fns.map(() => [] as number[]);
  for (let r = 0; r < reps; r++) {
    fns.forEach((f, k) => {
      const c0 = process.cpuUsage();
      const t0 = performance.now();
      for (let i = 0; i < inner; i++) f();
      wall[k]!.push((performance.now() - t0) / inner);
      const used = process.cpuUsage(c0);
      cpu[k]!.push((used.user + used.system) / 1000 / inner);
    });
  }
  return fns.map((_, k) => ({ wall: median(wall[k]!), cpu: median(cpu[k]!) }));
}

const ordered = [...threadCounts].sort((p, q) => q - p); // the pool is only ever shrunk
let current = info.threads;
for (const t of ordered) {
  if (t !== current) {
    native().setThreads(t);
    current = t;
  }
  for (const { O, I, note } of shapes) {
    const x = Tensor.zeros([N, I]);
    const dout = Tensor.zeros([N, O]);
    const W = Tensor.zeros([O, I]);
    rng.fillNormal(x.f32);
    rng.fillNormal(dout.f32);
    rng.fillNormal(W.f32, 0.02);
    const out = Tensor.zeros([N, O]);
    const dx = Tensor.zeros([N, I]);
    const dW = Tensor.zeros([O, I]);
    const scales = Tensor.zeros([O, I / G]);
    rng.fillUniform(scales.f32, 0.001, 0.01);
    const dscales = Tensor.zeros([O, I / G]);
    const flops = 2 * N * O * I;
    const gf = (t: { wall: number; cpu: number }): string =>
      `${(flops / t.wall / 1e6).toFixed(1)} / ${(flops / t.cpu / 1e6).toFixed(1)}`;
    for (const bits of bitsList) {
      const w = randomWeight(O, I, bits);
      const peak = fmaPeak(PROBE_MS);
      const [fq, ff, xq, xf, sq, sf] = timeAlternating(
        [
          () => packedLinearForward(out, x, w, scales),
          () => matmul(out, x, W, { transB: true }),
          () => packedLinearBackward(dx, null, dout, x, w, scales),
          () => matmul(dx, dout, W),
          () => packedLinearBackward(null, dscales, dout, x, w, scales),
          () => matmul(dW, dout, x, { transA: true, beta: 1 }),
        ],
        flops,
      );
      console.log(
        `| ${O} × ${I} | ${note} | ${bits} | ${t} | ${peak.toFixed(0)} | ` +
          `${gf(fq!)} | ${gf(ff!)} | ${gf(xq!)} | ${gf(xf!)} | ${gf(sq!)} | ${gf(sf!)} |`,
      );
    }
  }
}
