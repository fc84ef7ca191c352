// matmul: native kernels against the TypeScript twin on odd shapes, every transpose
// combination, alpha/beta (beta = 0 over NaN, beta = 1 accumulation), blocks larger than the
// cache blocks, rank-3 inputs and argument errors. Every kernel family this CPU can run is
// checked in this process (including the AVX-512 tiling emulated on AVX2); the EQAT_ISA=avx2
// and EQAT_ISA=scalar paths run in child processes, since the ISA is chosen at addon load.
// The tolerance is derived in test/ops/matmul-check.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { native } from '../../src/engine/native.js';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { matmul, matmulKernel, setMatmulKernel, type MatmulKernelName } from '../../src/ops/matmul.js';
import { matmulRef } from '../../src/ops/ref/matmul.js';
import { assertClose, randn } from '../util.js';
import { checkCase, runSweep } from './matmul-check.js';

const info = native().cpuInfo();
const autoKernel = matmulKernel();

function kernelsHere(): MatmulKernelName[] {
  const ks: MatmulKernelName[] = ['auto'];
  if (info.avx2) ks.push('avx512-emulated');
  return ks;
}

for (const kernel of kernelsHere()) {
  test(`matmul [${kernel === 'auto' ? autoKernel : kernel}]: odd shapes, all transposes, alpha/beta, large blocks`, () => {
    setMatmulKernel(kernel);
    try {
      const failures = runSweep(kernel === 'auto' ? 1 : 2, kernel === 'auto' ? 0.25 : 0.15);
      assert.deepEqual(failures.slice(0, 5), [], `${failures.length} failing cases`);
    } finally {
      setMatmulKernel('auto');
    }
  });
}

const checkScript = fileURLToPath(new URL('./matmul-check.js', import.meta.url));

/** Runs the check script in a child process with the given environment; resolves to its result. */
function runChild(isa: string, threads: string): Promise<{ status: number | null; out: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [checkScript, isa], {
      env: { ...process.env, EQAT_ISA: isa, EQAT_THREADS: threads },
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 60_000,
    });
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    child.stderr.on('data', (d: Buffer) => (out += d.toString()));
    child.on('close', (status) => resolve({ status, out }));
  });
}

test('matmul under EQAT_ISA=avx2 (1 thread) and EQAT_ISA=scalar (2 threads), in child processes', async () => {
  const runs: [string, string][] = [['scalar', '2']];
  if (info.avx2) runs.push(['avx2', '1']);
  const results = await Promise.all(runs.map(([isa, threads]) => runChild(isa, threads)));
  runs.forEach(([isa], i) => {
    const { status, out } = results[i]!;
    assert.equal(status, 0, `EQAT_ISA=${isa}: child failed (status ${status}):\n${out}`);
    assert.match(out, new RegExp(`\\[${isa}\\]: 0 failures`), `EQAT_ISA=${isa}`);
  });
});

test('matmul: a kernel that fails the check is caught (the check can fail)', () => {
  // A twin-vs-twin run with one product dropped must exceed the tolerance.
  const rng = new Rng(3);
  const M = 5, N = 6, K = 40;
  const a = randn(rng, [M, K]);
  const b = randn(rng, [K, N]);
  const good = Tensor.zeros([M, N]);
  const bad = Tensor.zeros([M, N]);
  matmulRef(good, a, b);
  const a2 = a.clone();
  a2.f32[2 * K + 17] = 0; // drops one product from row 2
  matmulRef(bad, a2, b);
  assert.throws(() => assertClose(bad.f32, good.f32, { atol: 1e-4 * Math.sqrt(K), rtol: 0 }));
  assert.equal(checkCase({ M: 3, N: 4, K: 5, transA: false, transB: false, alpha: 1, beta: 0 }, rng), null);
});

test('matmul: rank-3 inputs are flattened over their leading dims (linear layer forward and backward)', () => {
  const rng = new Rng(4);
  const [Bsz, T, I, O] = [2, 7, 33, 17];
  const x = randn(rng, [Bsz, T, I]); // (B, T, I)
  const w = randn(rng, [O, I]); // (O, I)
  const y = Tensor.zeros([Bsz, T, O]); // (B, T, O)
  const yRef = Tensor.zeros([Bsz * T, O]);
  matmul(y, x, w, { transB: true });
  matmulRef(yRef, x.view([Bsz * T, I]), w, { transB: true });
  const tol = { atol: 1e-4 * Math.sqrt(I), rtol: 1e-5 };
  assertClose(y.f32, yRef.f32, { ...tol, what: 'y = x Wᵀ' });

  const dy = randn(rng, [Bsz, T, O]); // (B, T, O)
  const dx = randn(rng, [Bsz, T, I]); // accumulated into
  const dxRef = dx.clone().view([Bsz * T, I]);
  matmul(dx, dy, w, { beta: 1 });
  matmulRef(dxRef, dy.view([Bsz * T, O]), w, { beta: 1 });
  assertClose(dx.f32, dxRef.f32, { atol: 1e-4 * Math.sqrt(O), rtol: 1e-5, what: 'dX += dY W' });

  const dw = randn(rng, [O, I]); // (O, I)
  const dwRef = dw.clone();
  matmul(dw, dy, x, { transA: true, beta: 1 });
  matmulRef(dwRef, dy.view([Bsz * T, O]), x.view([Bsz * T, I]), { transA: true, beta: 1 });
  assertClose(dw.f32, dwRef.f32, { atol: 1e-4 * Math.sqrt(Bsz * T), rtol: 1e-5, what: 'dW += dYᵀ X' });
});

test('matmul: argument errors name the op and the argument', () => {
  const a = Tensor.zeros([4, 5]);
  const b = Tensor.zeros([5, 6]);
  const out = Tensor.zeros([4, 6]);
  for (const f of [matmul, matmulRef]) {
    assert.throws(() => f(out, a, Tensor.zeros([6, 6])), (e: unknown) => e instanceof RangeError && /matmul: argument 'b'/.test(e.message));
    assert.throws(() => f(out, a, b, { transB: true }), (e: unknown) => e instanceof RangeError && /matmul: argument 'b'/.test(e.message));
    assert.throws(() => f(out, a, b, { transA: true }), (e: unknown) => e instanceof RangeError && /matmul: argument 'b'/.test(e.message));
    assert.throws(() => f(Tensor.zeros([4, 7]), a, b), (e: unknown) => e instanceof RangeError && /matmul: argument 'out'/.test(e.message));
    assert.throws(() => f(Tensor.zeros([6, 4]), a, b), (e: unknown) => e instanceof RangeError && /matmul: argument 'out'/.test(e.message));
    assert.throws(() => f(out, Tensor.zeros([20]), b), (e: unknown) => e instanceof RangeError && /matmul: argument 'a'/.test(e.message));
    assert.throws(() => f(out, a, Tensor.zeros([5, 6], 'i32')), (e: unknown) => e instanceof TypeError && /matmul: argument 'b'/.test(e.message));
    assert.throws(() => f(Tensor.zeros([4, 6], 'bf16'), a, b), (e: unknown) => e instanceof TypeError && /matmul: argument 'out'/.test(e.message));
    const buf = new Float32Array(4 * 5 + 4 * 6);
    const shared = new Tensor([4, 6], 'f32', buf.subarray(16, 40));
    assert.throws(() => f(shared, new Tensor([4, 5], 'f32', buf.subarray(0, 20)), b), (e: unknown) => e instanceof RangeError && /'out' overlaps argument 'a'/.test(e.message));
  }
  // The native entry point re-checks buffer lengths.
  const raw = native()['matmul']!;
  assert.throws(() => raw(out.f32, a.f32, b.f32, 4, 6, 6, false, false, 1, 0), /matmul: argument 'a' has 20 elements, needs 24/);
  assert.throws(() => setMatmulKernel('avx1024' as MatmulKernelName), /unknown kernel/);
});

test('matmul: empty shapes', () => {
  const out = Tensor.zeros([0, 5]);
  matmul(out, Tensor.zeros([0, 3]), Tensor.zeros([3, 5]));
  const out2 = new Tensor([2, 3], 'f32', new Float32Array(6).fill(NaN));
  matmul(out2, Tensor.zeros([2, 0]), Tensor.zeros([0, 3]));
  assert.deepEqual([...out2.f32], [0, 0, 0, 0, 0, 0]);
});
