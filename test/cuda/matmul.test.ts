// CUDA matmul (src/ops/cuda/matmul.ts): the mapping of the row-major problem onto cuBLASLt's
// column-major GEMM, checked without a GPU against matmulRef through the BLAS-semantics
// reference (emu/gemm-ref.ts); then matmulCuda itself on every backend (GPU when present, the
// emulator otherwise) against matmulRef, for f32 and bf16 inputs, all transpose combinations,
// alpha/beta, K = 0 and views at unaligned offsets.
//
// Tolerance (f32 accumulation in any order, as in test/ops/matmul-check.ts): element (i, j)
// may differ from the f64 twin by (K + 4) * 2^-24 * (|alpha| |op(a)_i| |op(b)_j| + |beta out0_ij|);
// a bf16 output adds its own rounding, 2^-8 of the value. bf16 inputs are compared with the twin
// run on the same bf16-rounded values (their products are exact in f32).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { bf16ToF32Ref, f32ToBf16Ref } from '../../src/engine/dtype.js';
import { matmulRef } from '../../src/ops/ref/matmul.js';
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
import { assertClose } from '../util.js';
import { gemmColMajorRef } from './emu/gemm-ref.js';
import { backendCases, withBackend } from './backends.js';

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
