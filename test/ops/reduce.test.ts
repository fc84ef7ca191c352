// Reductions and the MSE loss. On every backend (test/ops/spec.ts): the sum of squares and the
// MSE (queued, read, backward) against the f64 twins, and scaling in place (the gradient
// clipping of E2E-QP); on CUDA also the MSE wrapper's empty case and argument errors. On the CPU
// ops: sum and dot against the f64 twins on odd and large sizes, NaN and infinity handling of
// maxAbs / hasNonFinite at every vector position, determinism, the MSE backward against the
// twin and against finite differences, and the wrappers' errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { dot, hasNonFinite, maxAbs, mseBackward, mseForward, sum, sumSquares } from '../../src/ops/reduce.js';
import {
  dotRef,
  hasNonFiniteRef,
  maxAbsRef,
  mseBackwardRef,
  mseForwardRef,
  sumRef,
  sumSquaresRef,
} from '../../src/ops/ref/reduce.js';
import { allocReducePartials, mseForwardCuda } from '../../src/ops/cuda/reduce.js';
import type { DeviceArray } from '../../src/engine/cuda.js';
import { assertClose, checkGrad, ODD_SIZES, randn } from '../util.js';
import { assertBitExact } from '../cuda/backends.js';
import { forEachBackend, forEachCudaBackend } from './spec.js';

const SIZES = [...ODD_SIZES, 1000, 65_537, 1_000_003];

/**
 * Two f64 summations of n terms in different orders: each is within n * 2^-53 * sum|terms| of
 * the exact sum (the standard bound for recursive summation), so they are within twice that.
 */
function assertSumClose(got: number, want: number, n: number, magnitude: number, what: string): void {
  const tol = 2 * n * 2 ** -53 * magnitude;
  assert.ok(Math.abs(got - want) <= tol, `${what}: got ${got}, expected ${want} (tolerance ${tol})`);
}

test('sum, sumSquares, dot, mseForward match the f64 twins', () => {
  const rng = new Rng(21);
  for (const n of SIZES) {
    const a = randn(rng, [n], 2);
    const b = randn(rng, [n]);
    let absSum = 0, sq = 0, absDot = 0, sqDiff = 0;
    for (let i = 0; i < n; i++) {
      const x = a.f32[i]!, y = b.f32[i]!;
      absSum += Math.abs(x);
      sq += x * x;
      absDot += Math.abs(x * y);
      sqDiff += (x - y) ** 2;
    }
    assertSumClose(sum(a), sumRef(a), n, absSum, `sum n=${n}`);
    assertSumClose(sumSquares(a), sumSquaresRef(a), n, sq, `sumSquares n=${n}`);
    assertSumClose(dot(a, b), dotRef(a, b), n, absDot, `dot n=${n}`);
    // (a - b)^2 is exact in f64 for f32 inputs up to one rounding of the square: one more term
    assertSumClose(mseForward(a, b), mseForwardRef(a, b), n + 1, sqDiff / n, `mseForward n=${n}`);
  }
});

// Tolerances: f64 sums in another order than the twin's; on the CPU within the recursive
// summation bound (assertSumClose), on CUDA within 1e-12 relative. The MSE backward is bit for
// bit everywhere.
forEachBackend('sumSquares and the MSE (queued, read, backward) match the twins', (b) => {
  const rng = new Rng(12);
  const scratch = b.be.sumSquaresScratch(), record = b.be.mseRecord();
  try {
    for (const n of [...ODD_SIZES, 70_001, 300_007]) {
      const a = randn(rng, [n]), c = randn(rng, [n]), da = randn(rng, [n]);
      const ga = b.upload(a.f32), gc = b.upload(c.f32);
      const ss = b.be.sumSquares(ga, scratch.value), wantSs = sumSquaresRef(a);
      b.be.mseQueue(ga, gc, n, record.value);
      const mse = b.be.mseRead(record.value, n), wantMse = mseForwardRef(a, c);
      if (b.name === 'cpu') {
        let sqDiff = 0;
        for (let i = 0; i < n; i++) sqDiff += (a.f32[i]! - c.f32[i]!) ** 2;
        assertSumClose(ss, wantSs, n, wantSs, `sumSquares n=${n}`);
        assertSumClose(mse, wantMse, n + 1, sqDiff / n, `mse n=${n}`);
      } else {
        assert.ok(Math.abs(ss - wantSs) <= 1e-12 * wantSs, `sumSquares n=${n}: ${ss} vs ${wantSs}`);
        assert.ok(Math.abs(mse - wantMse) <= 1e-12 * Math.abs(wantMse), `mse n=${n}: ${mse} vs ${wantMse}`);
      }
      const gda = b.upload(da.f32);
      mseBackwardRef(da, a, c);
      b.be.mseBackward(gda, ga, gc, n);
      assertBitExact(b.download(gda), da.f32, `mse backward n=${n}`);
    }
  } finally {
    record.free();
    scratch.free();
  }
});

// Tolerances: the CPU's own sum bit for bit on the CPU; f64 sums in another order on CUDA
// (1e-12 relative). Scaling is one f32 product per element everywhere.
forEachBackend('sumSquares over a whole array, empty included, and scale in place', (b) => {
  const rng = new Rng(4);
  const scratch = b.be.sumSquaresScratch();
  try {
    for (const n of [0, 1, 31, 257, 100_003]) {
      const x = randn(rng, [n]);
      const gx = b.upload(x.f32);
      const got = b.be.sumSquares(gx, scratch.value);
      if (b.name === 'cpu') assert.equal(got, sumSquares(x), `n=${n}: the CPU's own sum`);
      else assertClose([got], [sumSquaresRef(x)], { atol: 0, rtol: 1e-12, what: `sum of squares n=${n}` });
      b.be.scale(gx, gx, 0.3);
      assert.deepEqual(b.download(gx), x.f32.map((v) => Math.fround(v * Math.fround(0.3))), `scaled n=${n}`);
    }
  } finally {
    scratch.free();
  }
});

forEachCudaBackend('mseForwardCuda: an empty mean is NaN; argument errors name the op and argument', (b) => {
  const partials = allocReducePartials();
  try {
    const f32 = (n: number): DeviceArray => b.alloc('f32', n) as DeviceArray;
    assert.ok(Number.isNaN(mseForwardCuda(f32(0), f32(0), partials)), 'empty: NaN');
    assert.throws(() => mseForwardCuda(f32(3), f32(4), partials), /mseForwardCuda: b/);
    assert.throws(() => mseForwardCuda(f32(3), f32(3), b.alloc('u8', 8) as DeviceArray), /mseForwardCuda: partials/);
  } finally {
    b.be.free(partials);
  }
});

test('sums are exact where f64 is exact, and accumulate beyond f32 precision', () => {
  // 2^24 + 1 ones would stall at 2^24 in an f32 accumulator.
  const n = (1 << 24) + 1;
  const ones = Tensor.zeros([n]);
  ones.f32.fill(1);
  assert.equal(sum(ones), n);
  assert.equal(sumSquares(ones), n);
  assert.equal(dot(ones, ones), n);
  const x = Tensor.fromF32(new Float32Array([0.1, 0.2, 0.3]));
  assert.equal(sum(x), Math.fround(0.1) + Math.fround(0.2) + Math.fround(0.3));
});

test('reductions are deterministic for a given thread count', () => {
  const rng = new Rng(22);
  const a = randn(rng, [777_777]);
  const b = randn(rng, [777_777]);
  const first = [sum(a), sumSquares(a), dot(a, b), mseForward(a, b)];
  for (let k = 0; k < 3; k++) assert.deepEqual([sum(a), sumSquares(a), dot(a, b), mseForward(a, b)], first);
});

test('maxAbs matches the twin; NaN anywhere gives NaN', () => {
  const rng = new Rng(23);
  for (const n of SIZES) {
    const a = randn(rng, [n]);
    assert.equal(maxAbs(a), maxAbsRef(a), `maxAbs n=${n}`);
  }
  for (const n of [1, 3, 17, 33, 65, 1000, 100_003]) {
    for (const pos of new Set([0, Math.floor(n / 2), n - 1, Math.max(0, n - 5)])) {
      const a = randn(rng, [n]);
      a.f32[pos] = NaN;
      assert.ok(Number.isNaN(maxAbs(a)), `maxAbs NaN at ${pos} of ${n}`);
      a.f32[pos] = -Infinity;
      assert.equal(maxAbs(a), Infinity, `maxAbs -inf at ${pos} of ${n}`);
      a.f32[pos] = -1e30;
      assert.equal(maxAbs(a), Math.fround(1e30), `maxAbs -1e30 at ${pos} of ${n}`);
    }
  }
  assert.equal(maxAbs(Tensor.zeros([0])), 0);
  assert.equal(maxAbs(Tensor.fromF32(new Float32Array([-0, 0]))), 0);
});

test('hasNonFinite finds inf, -inf and NaN at every position class', () => {
  const rng = new Rng(24);
  for (const n of [1, 3, 17, 33, 64, 65, 1000, 100_003]) {
    const a = randn(rng, [n], 1e30);
    assert.equal(hasNonFinite(a), false, `clean n=${n}`);
    assert.equal(hasNonFinite(a), hasNonFiniteRef(a));
    for (const pos of new Set([0, 1, Math.floor(n / 2), n - 1, n - 3].filter((p) => p >= 0 && p < n))) {
      for (const v of [Infinity, -Infinity, NaN]) {
        const old = a.f32[pos]!;
        a.f32[pos] = v;
        assert.equal(hasNonFinite(a), true, `${v} at ${pos} of ${n}`);
        assert.equal(hasNonFiniteRef(a), true);
        a.f32[pos] = old;
      }
    }
    a.f32[n - 1] = 3.4028234663852886e38; // FLT_MAX is finite
    assert.equal(hasNonFinite(a), false, `FLT_MAX n=${n}`);
  }
  assert.equal(hasNonFinite(Tensor.zeros([0])), false);
});

test('mseBackward matches the twin bit for bit and accumulates', () => {
  const rng = new Rng(25);
  for (const n of SIZES) {
    const a = randn(rng, [n]);
    const b = randn(rng, [n]);
    const da = randn(rng, [n]);
    const daRef = da.clone();
    mseBackward(da, a, b, 0.75);
    mseBackwardRef(daRef, a, b, 0.75);
    for (let i = 0; i < n; i++) {
      if (da.f32[i] !== daRef.f32[i]) assert.fail(`mseBackward n=${n} element ${i}: ${da.f32[i]} != ${daRef.f32[i]}`);
    }
  }
});

test('mseBackward agrees with finite differences of scale * mseForward', () => {
  const rng = new Rng(26);
  for (const n of [1, 3, 17, 65]) {
    for (const s of [1, 0.25]) {
      const a = randn(rng, [n]);
      const b = randn(rng, [n]);
      const da = Tensor.zeros([n]);
      mseBackward(da, a, b, s);
      checkGrad(() => s * mseForward(a, b), a.f32, da.f32, { what: `mse n=${n} scale=${s}` });
      // with respect to b the gradient is the negative
      const db = Tensor.zeros([n]);
      mseBackward(db, b, a, s);
      checkGrad(() => s * mseForward(a, b), b.f32, db.f32, { what: `mse wrt b n=${n}` });
    }
  }
});

test('mseForward of an empty tensor is NaN (mean over nothing)', () => {
  assert.ok(Number.isNaN(mseForward(Tensor.zeros([0]), Tensor.zeros([0]))));
});

test('errors name the op and the argument', () => {
  const a = Tensor.zeros([3, 4]);
  const b = Tensor.zeros([4, 3]);
  const i = Tensor.zeros([12], 'i32');
  assert.throws(() => dot(a, b), (e: Error) => e instanceof RangeError && /dot: argument 'b'/.test(e.message));
  assert.throws(() => mseForward(a, b), (e: Error) => e instanceof RangeError && /mseForward: argument 'b'/.test(e.message));
  assert.throws(() => mseBackward(b, a, a), (e: Error) => e instanceof RangeError && /mseBackward: argument 'da'/.test(e.message));
  assert.throws(() => sum(i), (e: Error) => e instanceof TypeError && /sum: argument 'x'/.test(e.message));
  assert.throws(() => maxAbs(i), (e: Error) => e instanceof TypeError && /maxAbs: argument 'x'/.test(e.message));
  assert.throws(() => hasNonFinite(i), (e: Error) => e instanceof TypeError && /hasNonFinite/.test(e.message));
  assert.throws(() => dot(a, i.view([3, 4])), (e: Error) => e instanceof TypeError && /dot: argument 'b'/.test(e.message));
});
