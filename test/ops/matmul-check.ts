// Native-vs-twin checks for matmul, shared by test/ops/matmul.test.ts and, as a script, by the
// child processes that test the EQAT_ISA=avx2|scalar kernel paths (the ISA is fixed when the
// addon loads, so each path needs its own process):
//
//   node dist/test/ops/matmul-check.js <expected kernel name>
//
// exits 0 when the kernel in use has that name and every case matches the twin, 1 otherwise.
//
// Tolerance. The twin accumulates in f64 and rounds once; the native kernel accumulates K
// products in f32 in some blocked order, with fused multiply-adds, and folds alpha/beta in
// at the end of each K block. The classical bound for a length-K f32 dot product in any
// summation order is |error| <= K * u * sum_k |a_k b_k| (u = 2^-24), and by Cauchy-Schwarz
// sum_k |a_k b_k| <= |a_row| * |b_col|. Each K block adds at most two more roundings of the
// running value (the alpha/beta update), and the twin's final rounding one more. So element
// (i, j) may differ by
//   tol_ij = (K + 2 * ceil(K / 64) + 4) * u * (|alpha| * |op(a)_i| * |op(b)_j| + |beta * out0_ij|)
// (64 is below every kernel's K block, so this over-counts the blocks). On unit-normal inputs
// that is about 6e-8 * K^2 — the same order as the usual 1e-4 * sqrt(K) rule of thumb for the
// sizes tested, but a bound that holds by construction for any alpha, beta and scale, while a
// dropped or misplaced product (size ~1) is far larger for every K tested (<= ~600).
// Cases with small-integer data are exact in f32 and must match bit for bit.
import { pathToFileURL } from 'node:url';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { matmul, matmulKernel } from '../../src/ops/matmul.js';
import { matmulRef } from '../../src/ops/ref/matmul.js';

export const SHAPE_SIZES = [1, 3, 7, 17, 33, 65, 130] as const;

export interface MatmulCase {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  alpha: number;
  beta: number;
  /** Small integers in a, b and out: every f32 operation is exact, results must be identical. */
  exact?: boolean;
}

const U = 2 ** -24;

/** A Float32Array view of n elements at an odd offset inside a larger buffer filled with a sentinel. */
function guarded(n: number, pad: number): { view: Float32Array; whole: Float32Array } {
  const whole = new Float32Array(n + 2 * pad).fill(-12345.5);
  return { view: whole.subarray(pad, pad + n), whole };
}

function fill(rng: Rng, x: Float32Array, exact: boolean): void {
  if (exact) for (let i = 0; i < x.length; i++) x[i] = rng.int(-3, 4);
  else rng.fillNormal(x);
}

/** Runs one case through the native kernel and the twin; returns a failure message or null. */
export function checkCase(c: MatmulCase, rng: Rng): string | null {
  const { M, N, K, transA, transB, alpha, beta } = c;
  const exact = c.exact ?? false;
  const pad = 1 + rng.int(0, 5); // odd offsets: unaligned loads and stores
  const ga = guarded(M * K, pad);
  const gb = guarded(K * N, pad + 1);
  const go = guarded(M * N, pad + 2);
  fill(rng, ga.view, exact);
  fill(rng, gb.view, exact);
  if (beta === 0) go.view.fill(NaN); // must be ignored
  else fill(rng, go.view, exact);
  const a = new Tensor(transA ? [K, M] : [M, K], 'f32', ga.view);
  const b = new Tensor(transB ? [N, K] : [K, N], 'f32', gb.view);
  const out = new Tensor([M, N], 'f32', go.view);
  const out0 = out.clone();
  const want = out.clone();
  const aCopy = ga.whole.slice();
  const bCopy = gb.whole.slice();
  const opts = { transA, transB, alpha, beta };
  matmul(out, a, b, opts);
  matmulRef(want, a, b, opts);
  const name = `${M}x${N}x${K} ${transA ? 'T' : 'N'}${transB ? 'T' : 'N'} alpha=${alpha} beta=${beta}${exact ? ' exact' : ''}`;

  for (let i = 0; i < ga.whole.length; i++) if (!Object.is(ga.whole[i], aCopy[i])) return `${name}: a modified at ${i}`;
  for (let i = 0; i < gb.whole.length; i++) if (!Object.is(gb.whole[i], bCopy[i])) return `${name}: b modified at ${i}`;
  for (let i = 0; i < pad + 2; i++) {
    if (go.whole[i] !== -12345.5 || go.whole[go.whole.length - 1 - i] !== -12345.5) return `${name}: wrote outside out`;
  }
  // Row norms of op(a) and column norms of op(b) for the error bound.
  const A = ga.view;
  const B = gb.view;
  const rowNorm = new Float64Array(M);
  const colNorm = new Float64Array(N);
  for (let i = 0; i < M; i++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += (transA ? A[k * M + i]! : A[i * K + k]!) ** 2;
    rowNorm[i] = Math.sqrt(s);
  }
  for (let j = 0; j < N; j++) {
    let s = 0;
    for (let k = 0; k < K; k++) s += (transB ? B[j * K + k]! : B[k * N + j]!) ** 2;
    colNorm[j] = Math.sqrt(s);
  }
  const factor = (K + 2 * Math.ceil(K / 64) + 4) * U;
  const got = out.f32;
  const ref = want.f32;
  for (let i = 0; i < M; i++) {
    for (let j = 0; j < N; j++) {
      const idx = i * N + j;
      const g = got[idx]!;
      const w = ref[idx]!;
      const c0 = beta === 0 ? 0 : Math.abs(beta * out0.f32[idx]!);
      const tol = exact ? 0 : factor * (Math.abs(alpha) * rowNorm[i]! * colNorm[j]! + c0);
      if (!(Math.abs(g - w) <= tol)) {
        return `${name}: out[${i}][${j}] = ${g}, twin ${w}, |diff| ${Math.abs(g - w)} > tol ${tol}`;
      }
    }
  }
  return null;
}

const TRANS: [boolean, boolean][] = [
  [false, false],
  [false, true],
  [true, false],
  [true, true],
];

/**
 * The cases every kernel runs: odd sizes (a random fifth of the M x N x K cube per transpose
 * combination, always including the 1s and the largest), alpha/beta variants, blocks larger
 * than the kernels' cache blocks (K > KC, M > MC, N > NC), few-row shapes with long K, and
 * exact integer cases.
 */
export function sweepCases(rng: Rng, fraction = 0.2): MatmulCase[] {
  const cases: MatmulCase[] = [];
  const betas = [0, 1, 0.5];
  for (const [transA, transB] of TRANS) {
    for (const M of SHAPE_SIZES) {
      for (const N of SHAPE_SIZES) {
        for (const K of SHAPE_SIZES) {
          const corner = (M === 1 || M === 130) && (N === 1 || N === 130) && (K === 1 || K === 130);
          if (!corner && rng.next() >= fraction) continue;
          const beta = betas[rng.int(0, betas.length)]!;
          const alpha = rng.next() < 0.7 ? 1 : -0.75;
          cases.push({ M, N, K, transA, transB, alpha, beta });
        }
      }
    }
    // Several K blocks (beta applied once, then accumulation), several M blocks, edge tiles.
    cases.push({ M: 250, N: 19, K: 520, transA, transB, alpha: 1, beta: 0 });
    cases.push({ M: 250, N: 37, K: 270, transA, transB, alpha: 0.5, beta: -1.5 });
    // More columns than one N block.
    cases.push({ M: 30, N: 4100, K: 5, transA, transB, alpha: 1, beta: 1 });
    // Few rows (B read in place), long K with a tail that is not a multiple of the vector width.
    for (const M of [1, 5, 13, 25]) cases.push({ M, N: 35, K: 1001, transA, transB, alpha: 1, beta: 0.25 });
    // Exact integer arithmetic: must be identical, not just close.
    cases.push({ M: 65, N: 130, K: 33, transA, transB, alpha: 1, beta: 0, exact: true });
    cases.push({ M: 7, N: 33, K: 300, transA, transB, alpha: 1, beta: 1, exact: true });
    cases.push({ M: 140, N: 17, K: 270, transA, transB, alpha: 2, beta: -1, exact: true });
    // alpha = 0: out = beta * out, a and b unread; K = 0: the same.
    cases.push({ M: 17, N: 9, K: 3, transA, transB, alpha: 0, beta: 0.5 });
    cases.push({ M: 17, N: 9, K: 0, transA, transB, alpha: 1, beta: 0 });
    cases.push({ M: 17, N: 9, K: 0, transA, transB, alpha: 1, beta: 2 });
  }
  return cases;
}

/** Runs the sweep; returns the failure messages (empty when all pass). */
export function runSweep(seed: number, fraction?: number): string[] {
  const rng = new Rng(seed);
  const failures: string[] = [];
  for (const c of sweepCases(rng, fraction)) {
    const msg = checkCase(c, rng);
    if (msg) failures.push(msg);
  }
  return failures;
}

function main(): void {
  const expected = process.argv[2];
  const kernel = matmulKernel();
  if (expected && kernel !== expected) {
    console.error(`matmul-check: expected kernel '${expected}', the addon chose '${kernel}'`);
    process.exit(1);
  }
  const failures = runSweep(Number(process.env.MATMUL_CHECK_SEED ?? 11), 0.12);
  for (const f of failures.slice(0, 10)) console.error(`matmul-check [${kernel}]: ${f}`);
  console.log(`matmul-check [${kernel}]: ${failures.length} failures`);
  process.exit(failures.length ? 1 : 0);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) main();
