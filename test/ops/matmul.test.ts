// Matmul and the linear layer over it.
// The Backend's linear forward and backward, one spec on every backend (test/ops/spec.ts),
// against matmulRef and the bias twins.
// The CPU matmul: native kernels against the TypeScript twin on odd shapes, every transpose
// combination, alpha/beta (beta = 0 over NaN, beta = 1 accumulation), blocks larger than the
// cache blocks, rank-3 inputs and argument errors. Every kernel family this CPU can run is
// checked in this process (including the AVX-512 tiling emulated on AVX2); the EQAT_ISA=avx2
// and EQAT_ISA=scalar paths run in child processes, since the ISA is chosen at addon load.
// The tolerance is derived in test/ops/matmul-check.ts.
// The CUDA matmul (src/ops/cuda/matmul.ts): the mapping of the row-major problem onto
// cuBLASLt's column-major GEMM, checked without a GPU against matmulRef through the
// BLAS-semantics reference (test/cuda/emu/gemm-ref.ts); then matmulCuda itself on the CUDA
// backends (GPU when present, the emulator) against matmulRef, for f32 and bf16 inputs, all
// transpose combinations, alpha/beta, K = 0 and views at unaligned offsets.
//
// CUDA tolerance (f32 accumulation in any order, as in matmul-check.ts): element (i, j)
// may differ from the f64 twin by (K + 4) * 2^-24 * (|alpha| |op(a)_i| |op(b)_j| + |beta out0_ij|);
// a bf16 output adds its own rounding, 2^-8 of the value. bf16 inputs are compared with the twin
// run on the same bf16-rounded values (their products are exact in f32).
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
import { bf16ToF32Ref, f32ToBf16Ref } from '../../src/engine/dtype.js';
import {
  allocDevice,
  deviceView,
  downloadDevice,
  freeDevice,
  toDevice,
  uploadDevice,
  type DeviceArray,
} from '../../src/engine/cuda.js';
import { matmulCuda, rowMajorGemm } from '../../src/ops/cuda/matmul.js';
import { linearBackwardCuda } from '../../src/ops/cuda/linear.js';
import { addBiasRef, biasBackwardRef } from '../../src/ops/ref/elementwise.js';
import { gemmColMajorRef } from '../cuda/emu/gemm-ref.js';
import { backendCases, withBackend } from '../cuda/backends.js';
import { forEachBackend } from './spec.js';

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

forEachBackend('linear: forward with bias, backward with dx overwritten then accumulated, dw and dbias accumulated, match the twins', (b) => {
  const rng = new Rng(26);
  for (const [N, O, I] of [[9, 5, 7], [14, 17, 33], [1, 3, 65]] as const) {
    const what = `N=${N} O=${O} I=${I}`;
    const x = randn(rng, [N, I]), w = randn(rng, [O, I]), bias = randn(rng, [O]), dout = randn(rng, [N, O]);
    const dw0 = randn(rng, [O, I]), dbias0 = randn(rng, [O]), dx0 = randn(rng, [N, I]);
    const d = { N, O, I };
    // f32 dot products of length K against the f64 twin (the rank-3 CPU rule), dbias one f32 rounding of f64 column sums
    const tol = (K: number) => ({ atol: 1e-4 * Math.sqrt(K), rtol: 1e-5 });
    const out = Tensor.zeros([N, O]);
    matmulRef(out, x, w, { transB: true });
    addBiasRef(out, bias);
    const gx = b.upload(x.f32), gw = b.upload(w.f32), gdout = b.upload(dout.f32), gout = b.alloc('f32', N * O);
    b.be.linearForward(gout, gx, gw, b.upload(bias.f32), d, null);
    assertClose(b.download(gout), out.f32, { ...tol(I), what: `${what} out` });

    const dx = Tensor.zeros([N, I]), dw = dw0.clone(), dbias = dbias0.clone();
    matmulRef(dx, dout, w);
    matmulRef(dw, dout, x, { transA: true, beta: 1 });
    biasBackwardRef(dbias, dout);
    const gdx = b.upload(dx0.f32), gdw = b.upload(dw0.f32), gdbias = b.upload(dbias0.f32);
    b.be.linearBackward(gdx, gdw, gdbias, gdout, gx, gw, d, false, null);
    assertClose(b.download(gdx), dx.f32, { ...tol(O), what: `${what} dx (overwritten)` });
    assertClose(b.download(gdw), dw.f32, { ...tol(N), what: `${what} dw (accumulated)` });
    assertClose(b.download(gdbias), dbias.f32, { atol: 1e-6, rtol: 2 ** -23, what: `${what} dbias (accumulated)` });
    b.be.linearBackward(gdx, null, null, gdout, gx, gw, d, true, null);
    assertClose(b.download(gdx), dx.f32.map((v) => 2 * v), { ...tol(O), what: `${what} dx (accumulated)` });
  }
});

const U = 2 ** -24;
const SIZES = [1, 3, 7, 17, 33, 65] as const;

interface Case {
  M: number;
  N: number;
  K: number;
  transA: boolean;
  transB: boolean;
  alpha: number;
  beta: number;
}

function cases(rng: Rng, count: number): Case[] {
  const out: Case[] = [];
  for (let i = 0; i < count; i++) {
    const pick = () => SIZES[rng.int(0, SIZES.length)]!;
    out.push({
      M: pick(),
      N: pick(),
      K: pick(),
      transA: i % 2 === 1,
      transB: i % 4 >= 2,
      alpha: i % 3 === 0 ? 1 : rng.normal(),
      beta: i % 5 === 0 ? 0 : i % 5 === 1 ? 1 : rng.normal(),
    });
  }
  return out;
}

function rowNorms(x: Float32Array, rows: number, cols: number, byRow: boolean): Float64Array {
  const n = new Float64Array(byRow ? rows : cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) n[byRow ? r : c] += x[r * cols + c]! ** 2;
  return n.map(Math.sqrt);
}

/** Per-element bound on |got - twin| (see the file header). */
function bound(c: Case, a: Float32Array, b: Float32Array, out0: Float32Array, twin: Float32Array, bf16Out: boolean): Float64Array {
  // norms of the rows of op(a) (M of them) and of the columns of op(b) (N of them)
  const na = c.transA ? rowNorms(a, c.K, c.M, false) : rowNorms(a, c.M, c.K, true);
  const nb = c.transB ? rowNorms(b, c.N, c.K, true) : rowNorms(b, c.K, c.N, false);
  const tol = new Float64Array(c.M * c.N);
  for (let i = 0; i < c.M; i++) {
    for (let j = 0; j < c.N; j++) {
      const e = i * c.N + j;
      tol[e] = (c.K + 4) * U * (Math.abs(c.alpha) * na[i]! * nb[j]! + Math.abs(c.beta * out0[e]!)) + 1e-30;
      if (bf16Out) tol[e] += 2 ** -8 * Math.abs(twin[e]!) + 2 ** -8 * tol[e]!;
    }
  }
  return tol;
}

function assertWithin(got: ArrayLike<number>, want: ArrayLike<number>, tol: Float64Array, what: string): void {
  assert.equal(got.length, want.length, `${what}: length`);
  for (let i = 0; i < got.length; i++) {
    if (!(Math.abs(got[i]! - want[i]!) <= tol[i]!)) {
      assert.fail(`${what}: element ${i}: got ${got[i]}, expected ${want[i]} (tolerance ${tol[i]})`);
    }
  }
}

const roundBf16 = (x: Float32Array): Float32Array => x.map((v) => bf16ToF32Ref(f32ToBf16Ref(v)));

test('rowMajorGemm: the column-major GEMM it describes equals the row-major twin, bit for bit on integers', () => {
  const rng = new Rng(21);
  for (const c of cases(rng, 64)) {
    const what = JSON.stringify(c);
    const a = Tensor.zeros(c.transA ? [c.K, c.M] : [c.M, c.K]);
    const b = Tensor.zeros(c.transB ? [c.N, c.K] : [c.K, c.N]);
    const out = Tensor.zeros([c.M, c.N]);
    // small integers keep every sum exact, so both orders agree exactly
    for (const t of [a, b, out]) for (let i = 0; i < t.size; i++) t.f32[i] = rng.int(-4, 5);
    const alpha = [1, 2, -1, 3][rng.int(0, 4)]!, beta = [0, 1, -2, 3][rng.int(0, 4)]!;
    const twin = out.clone();
    matmulRef(twin, a, b, { transA: c.transA, transB: c.transB, alpha, beta });
    const g = rowMajorGemm(c.M, c.N, c.K, c.transA, c.transB);
    const C = out.f32.slice();
    gemmColMajorRef({ ...g, alpha, beta }, b.f32, a.f32, C);
    assert.deepEqual(Array.from(C), Array.from(twin.f32), what);
  }
});

for (const bc of backendCases()) {
  const on = (name: string, body: () => void): void => {
    test(`cuda matmul ${name} [${bc.name}]`, { skip: bc.skip }, () => withBackend(bc.backend(), body));
  };

  /** Runs one case with inputs of `inType` and an output of `outType`; views at odd offsets. */
  function runCase(rng: Rng, c: Case, inType: 'f32' | 'bf16', outType: 'f32' | 'bf16'): void {
    const what = `${inType}->${outType} ${JSON.stringify(c)}`;
    let a = Tensor.zeros(c.transA ? [c.K, c.M] : [c.M, c.K]);
    let b = Tensor.zeros(c.transB ? [c.N, c.K] : [c.K, c.N]);
    let out0 = Tensor.zeros([c.M, c.N]);
    rng.fillNormal(a.f32);
    rng.fillNormal(b.f32);
    rng.fillNormal(out0.f32);
    if (inType === 'bf16') {
      a = Tensor.fromF32(roundBf16(a.f32), a.shape);
      b = Tensor.fromF32(roundBf16(b.f32), b.shape);
    }
    if (outType === 'bf16') out0 = Tensor.fromF32(roundBf16(out0.f32), out0.shape);
    const twin = out0.clone();
    matmulRef(twin, a, b, { transA: c.transA, transB: c.transB, alpha: c.alpha, beta: c.beta });
    // each operand sits at an odd element offset inside a larger allocation (unaligned for cuBLASLt)
    const owned: DeviceArray[] = [];
    const place = (x: Float32Array, type: 'f32' | 'bf16'): DeviceArray => {
      const pad = 1 + rng.int(0, 3);
      const whole = allocDevice(type, x.length + 2 * pad);
      owned.push(whole);
      const v = deviceView(whole, pad, x.length);
      if (type === 'f32') uploadDevice(v, x);
      else uploadDevice(v, Uint16Array.from(x, (y) => f32ToBf16Ref(y)));
      return v;
    };
    try {
      const da = place(a.f32, inType), db = place(b.f32, inType), dout = place(out0.f32, outType);
      matmulCuda(dout, da, db, c.M, c.N, c.K, { transA: c.transA, transB: c.transB, alpha: c.alpha, beta: c.beta });
      const got =
        outType === 'f32'
          ? downloadDevice<Float32Array>(dout)
          : Float32Array.from(downloadDevice<Uint16Array>(dout), (h) => bf16ToF32Ref(h));
      assertWithin(got, twin.f32, bound(c, a.f32, b.f32, out0.f32, twin.f32, outType === 'bf16'), what);
    } finally {
      for (const o of owned) freeDevice(o);
    }
  }

  on('f32 matches the twin on odd shapes, all transposes, alpha and beta', () => {
    const rng = new Rng(22);
    for (const c of cases(rng, 24)) runCase(rng, c, 'f32', 'f32');
    runCase(rng, { M: 130, N: 67, K: 257, transA: false, transB: true, alpha: 1, beta: 0 }, 'f32', 'f32');
  });

  on('bf16 inputs with f32 and bf16 outputs match the twin on the rounded inputs', () => {
    const rng = new Rng(23);
    for (const c of cases(rng, 12)) {
      runCase(rng, c, 'bf16', 'f32');
      runCase(rng, c, 'bf16', 'bf16');
    }
  });

  on('K = 0 and alpha = 0 scale out by beta without reading a or b; beta = 0 ignores NaN in out', () => {
    const rng = new Rng(24);
    const M = 3, N = 5;
    for (const [K, alpha, beta] of [[0, 1, 0], [0, 1, 2.5], [7, 0, 0], [7, 0, -0.5], [0, 1, 1]] as const) {
      const out0 = new Float32Array(M * N);
      rng.fillNormal(out0);
      if (beta === 0) out0[4] = NaN;
      const a = new Float32Array(M * K).fill(NaN), b = new Float32Array(K * N).fill(NaN);
      const da = toDevice(a), db = toDevice(b), dout = toDevice(out0);
      try {
        matmulCuda(dout, da, db, M, N, K, { alpha, beta });
        const got = downloadDevice<Float32Array>(dout);
        const want = out0.map((v) => (beta === 0 ? 0 : Math.fround(beta * v)));
        assert.deepEqual(Array.from(got), Array.from(want), `K=${K} alpha=${alpha} beta=${beta}`);
      } finally {
        for (const d of [da, db, dout]) freeDevice(d);
      }
    }
  });

  on('linear backward: dw accumulates, or is overwritten without being read (accumulateDw false)', () => {
    const rng = new Rng(25);
    const N = 9, O = 5, I = 7;
    const dout = Tensor.zeros([N, O]), x = Tensor.zeros([N, I]), w = Tensor.zeros([O, I]), dw0 = Tensor.zeros([O, I]);
    for (const t of [dout, x, w, dw0]) rng.fillNormal(t.f32);
    const product = Tensor.zeros([O, I]);
    matmulRef(product, dout, x, { transA: true }); // doutᵀ x
    const dx = Tensor.zeros([N, I]);
    matmulRef(dx, dout, w);
    const d = { dout: toDevice(dout.f32), x: toDevice(x.f32), w: toDevice(w.f32) };
    const acc = toDevice(dw0.f32), over = toDevice(new Float32Array(O * I).fill(NaN)), ddx = toDevice(new Float32Array(N * I));
    try {
      linearBackwardCuda(ddx, acc, null, d.dout, d.x, d.w, { N, O, I });
      linearBackwardCuda(null, over, null, d.dout, d.x, d.w, { N, O, I }, false, null, false);
      const sum = dw0.f32.map((v, i) => Math.fround(v + product.f32[i]!));
      assertClose(downloadDevice<Float32Array>(acc), sum, { atol: 1e-5, rtol: 1e-5, what: 'dw accumulated' });
      assertClose(downloadDevice<Float32Array>(over), product.f32, { atol: 1e-5, rtol: 1e-5, what: 'dw overwritten (its NaN never read)' });
      assertClose(downloadDevice<Float32Array>(ddx), dx.f32, { atol: 1e-5, rtol: 1e-5, what: 'dx' });
    } finally {
      for (const a of [d.dout, d.x, d.w, acc, over, ddx]) freeDevice(a);
    }
  });
}

test('matmulCuda rejects bad arguments before touching the device', () => {
  const fake = (dtype: 'f32' | 'bf16' | 'i32', length: number, handle = 0x1000n): DeviceArray => ({
    handle,
    dtype,
    length,
    bytes: length * (dtype === 'bf16' ? 2 : 4),
    owner: false,
  });
  const a = fake('f32', 6), b = fake('f32', 12, 0x2000n), out = fake('f32', 8, 0x3000n);
  assert.throws(() => matmulCuda(out, a, b, 2, 4, 4), /matmulCuda: a: expected 8 elements/);
  assert.throws(() => matmulCuda(out, a, fake('bf16', 12, 0x2000n), 2, 4, 3), /matmulCuda: argument 'b' must have a's dtype f32/);
  assert.throws(() => matmulCuda(fake('bf16', 8, 0x3000n), a, b, 2, 4, 3), /argument 'out' must be f32, got bf16/);
  assert.throws(() => matmulCuda(out, fake('i32', 6), b, 2, 4, 3), /argument 'a' must be f32 or bf16/);
  assert.throws(() => matmulCuda(fake('f32', 8, 0x1004n), a, b, 2, 4, 3), /'out' overlaps argument 'a'/);
  assert.throws(() => matmulCuda(out, a, b, 2, 4, 3, { transA: 1 as unknown as boolean }), /option 'transA' must be a boolean/);
});
