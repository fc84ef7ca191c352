// Softmax cross-entropy. On every backend (test/ops/spec.ts): the forward and the fused
// forward+backward (its gradient scale read from the backend's record, rewritten between calls;
// in and out of place) against the f64 twin on odd vocabulary sizes, ignored rows, extreme,
// masked (-inf) and uniform logits, and the host check of a micro-batch's ids and targets
// (every id first, then the targets; each backend's op names in the messages). On CUDA also,
// through the wrappers: the fused op equal to the separate ones bit for bit, the overwriting
// backward in and out of place, the out-of-range target error (nothing written; check: false
// gives NaN rows), the search for the first bad index, argument errors. On the CPU ops: forward
// and backward against the twin on odd vocabulary sizes (block and vector tails included),
// in-place backward, finite differences of scale * sum(losses), the out-of-range target error
// and the wrappers' shape and dtype errors.
//
// Tolerances, the same on every backend (f64 sums in another order than the twin's): losses
// 2e-6 absolute and relative; dlogits 1e-7·|scale| absolute, 1e-5 relative.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import {
  crossEntropyBackward,
  crossEntropyForward,
  crossEntropyForwardBackward,
  IGNORE_INDEX,
} from '../../src/ops/crossentropy.js';
import {
  crossEntropyBackwardRef,
  crossEntropyForwardBackwardRef,
  crossEntropyForwardRef,
} from '../../src/ops/ref/crossentropy.js';
import { DeviceAllocations, deviceView, downloadDevice, uploadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { allocLossScale, crossEntropyBackwardCuda, crossEntropyForwardBackwardCuda, crossEntropyForwardCuda, writeLossScale } from '../../src/ops/cuda/crossentropy.js';
import { firstBadIndexCuda } from '../../src/ops/cuda/indices.js';
import { assertClose, checkGrad, ODD_SIZES, randn } from '../util.js';
import { assertBitExact } from '../cuda/backends.js';
import { forEachBackend, forEachCudaBackend, type OnBackend } from './spec.js';

function randomTargets(rng: Rng, N: number, V: number, ignoreEvery = 0): Tensor {
  const t = Tensor.zeros([N], 'i32');
  for (let r = 0; r < N; r++) t.i32[r] = ignoreEvery > 0 && r % ignoreEvery === 1 ? IGNORE_INDEX : rng.int(0, V);
  return t;
}

/** Runs forward and backward natively and with the twin and compares them. */
function compare(logits: Tensor, targets: Tensor, scale: number, what: string): void {
  const N = targets.size;
  const losses = Tensor.zeros([N]);
  const lossesRef = Tensor.zeros([N]);
  crossEntropyForward(losses, logits, targets);
  crossEntropyForwardRef(lossesRef, logits, targets);
  assertClose(losses.f32, lossesRef.f32, { atol: 2e-6, rtol: 2e-6, what: `${what} losses` });
  const d = Tensor.zeros(logits.shape);
  d.f32.fill(123); // must be overwritten
  const dRef = Tensor.zeros(logits.shape);
  crossEntropyBackward(d, logits, targets, scale);
  crossEntropyBackwardRef(dRef, logits, targets, scale);
  assertClose(d.f32, dRef.f32, { atol: 1e-7 * Math.abs(scale), rtol: 1e-5, what: `${what} dlogits` });
}

test('forward and backward match the twin on odd shapes', () => {
  const rng = new Rng(31);
  for (const N of [1, 3, 17]) {
    for (const V of [...ODD_SIZES, 2047, 2049, 4101]) {
      const logits = randn(rng, [N, V], 3);
      compare(logits, randomTargets(rng, N, V), 1 / N, `N=${N} V=${V}`);
    }
  }
});

test('large vocabulary, many rows (threaded over rows)', () => {
  const rng = new Rng(32);
  const N = 24, V = 32_003;
  const logits = randn(rng, [N, V], 4);
  compare(logits, randomTargets(rng, N, V, 5), 1 / 17, `N=${N} V=${V}`);
});

test('leading dimensions are flattened into rows', () => {
  const rng = new Rng(33);
  const logits = randn(rng, [2, 5, 33]);
  const targets = randomTargets(rng, 10, 33).view([2, 5]);
  compare(logits, targets, 0.5, '(2, 5, 33)');
  const losses = Tensor.zeros([2, 5]);
  crossEntropyForward(losses, logits, targets);
  const flat = Tensor.zeros([10]);
  crossEntropyForward(flat, logits.view([10, 33]), targets.view([10]));
  assert.deepEqual(losses.f32, flat.f32);
});

test('extreme and masked logits stay finite and exact', () => {
  const rng = new Rng(34);
  const N = 6, V = 1001;
  const logits = randn(rng, [N, V], 1);
  const x = logits.f32;
  for (let i = 0; i < V; i++) x[0 * V + i] = x[0 * V + i]! * 1e4; // huge spread
  for (let i = 0; i < V; i++) x[1 * V + i] = x[1 * V + i]! + 5e3; // large offset
  for (let i = 0; i < V; i += 2) x[2 * V + i] = -Infinity; // masked classes
  for (let i = 0; i < V; i++) x[3 * V + i] = 0; // uniform
  x[4 * V + 7] = 1e5; // one dominant logit
  const targets = Tensor.fromI32(new Int32Array([3, 500, 1, 7, 7, 0]));
  compare(logits, targets, 1, 'extreme');
  const losses = Tensor.zeros([N]);
  crossEntropyForward(losses, logits, targets);
  for (const v of losses.f32) assert.ok(Number.isFinite(v) && v >= 0, `loss ${v}`);
  assertClose([losses.f32[3]!], [Math.log(V)], { atol: 1e-6, rtol: 1e-6, what: 'uniform row loss = log V' });
  assert.equal(losses.f32[4], 0, 'dominant correct logit gives loss 0');
  const d = Tensor.zeros([N, V]);
  crossEntropyBackward(d, logits, targets, 1);
  for (let i = 0; i < V; i += 2) assert.equal(d.f32[2 * V + i], 0, 'masked classes get zero gradient');
  let rowSum = 0;
  for (let i = 0; i < V; i++) rowSum += d.f32[i]!;
  assert.ok(Math.abs(rowSum) < 1e-5, `gradient row sums to 0, got ${rowSum}`);
});

test('ignored rows: zero loss and zero gradient row', () => {
  const rng = new Rng(35);
  const N = 7, V = 65;
  const logits = randn(rng, [N, V]);
  const targets = randomTargets(rng, N, V, 2);
  const losses = Tensor.zeros([N]);
  losses.f32.fill(9);
  crossEntropyForward(losses, logits, targets);
  const d = Tensor.zeros([N, V]);
  d.f32.fill(9);
  crossEntropyBackward(d, logits, targets, 1);
  for (let r = 0; r < N; r++) {
    if (targets.i32[r] !== IGNORE_INDEX) {
      assert.ok(losses.f32[r]! > 0);
      continue;
    }
    assert.equal(losses.f32[r], 0, `row ${r} loss`);
    for (let i = 0; i < V; i++) assert.equal(d.f32[r * V + i], 0, `row ${r} gradient`);
  }
  compare(logits, targets, 0.3, 'with ignored rows');
  const all = Tensor.fromI32(new Int32Array(N).fill(IGNORE_INDEX));
  crossEntropyForward(losses, logits, all);
  assert.deepEqual([...losses.f32], new Array(N).fill(0));
});

test('backward in place (dlogits = logits) equals the out-of-place result', () => {
  const rng = new Rng(36);
  for (const [N, V] of [[3, 17], [5, 4099], [9, 20_001]] as const) {
    const logits = randn(rng, [N, V], 2);
    const targets = randomTargets(rng, N, V, 4);
    const d = Tensor.zeros([N, V]);
    crossEntropyBackward(d, logits, targets, 0.125);
    const inPlace = logits.clone();
    crossEntropyBackward(inPlace, inPlace, targets, 0.125);
    assert.deepEqual(inPlace.f32, d.f32, `in place N=${N} V=${V}`);
  }
});

test('fused forward+backward equals the separate ops, out of place and in place', () => {
  const rng = new Rng(39);
  for (const [N, V] of [[1, 1], [3, 17], [7, 2049], [6, 20_003]] as const) {
    const logits = randn(rng, [N, V], 3);
    const targets = randomTargets(rng, N, V, 3);
    const losses = Tensor.zeros([N]);
    const d = Tensor.zeros([N, V]);
    crossEntropyForward(losses, logits, targets);
    crossEntropyBackward(d, logits, targets, 0.25);
    const fusedLosses = Tensor.zeros([N]);
    fusedLosses.f32.fill(5);
    const fused = Tensor.zeros([N, V]);
    fused.f32.fill(5);
    crossEntropyForwardBackward(fusedLosses, fused, logits, targets, 0.25);
    // the fused loss sums the exponentials in another order than the forward's online pass
    assertClose(fusedLosses.f32, losses.f32, { atol: 1e-6, rtol: 1e-6, what: `fused losses N=${N} V=${V}` });
    assert.deepEqual(fused.f32, d.f32, `fused dlogits N=${N} V=${V}`);
    const fusedOutOfPlace = fusedLosses.f32.slice();
    const inPlace = logits.clone();
    crossEntropyForwardBackward(fusedLosses, inPlace, inPlace, targets, 0.25);
    assert.deepEqual(fusedLosses.f32, fusedOutOfPlace, `in-place fused losses N=${N} V=${V}`);
    assert.deepEqual(inPlace.f32, d.f32, `in-place fused dlogits N=${N} V=${V}`);
    const lossesRef = Tensor.zeros([N]);
    const dRef = logits.clone();
    crossEntropyForwardBackwardRef(lossesRef, dRef, dRef, targets, 0.25);
    assertClose(fusedLosses.f32, lossesRef.f32, { atol: 2e-6, rtol: 2e-6, what: 'fused vs twin losses' });
    assertClose(inPlace.f32, dRef.f32, { atol: 1e-7 * 0.25, rtol: 1e-5, what: 'fused vs twin dlogits' });
  }
  const bad = Tensor.fromI32(new Int32Array([0, 99]));
  assert.throws(
    () => crossEntropyForwardBackward(Tensor.zeros([2]), Tensor.zeros([2, 5]), Tensor.zeros([2, 5]), bad, 1),
    (e: Error) => e instanceof RangeError && /crossEntropyForwardBackward/.test(e.message) && /row 1/.test(e.message),
  );
});

test('backward agrees with finite differences of scale * sum(losses)', () => {
  const rng = new Rng(37);
  for (const [N, V, scale] of [[1, 3, 1], [3, 17, 0.5], [4, 65, 2]] as const) {
    const logits = randn(rng, [N, V]);
    const targets = randomTargets(rng, N, V, 3);
    const losses = Tensor.zeros([N]);
    const f = (): number => {
      crossEntropyForward(losses, logits, targets);
      let s = 0;
      for (const v of losses.f32) s += v;
      return s * scale;
    };
    const d = Tensor.zeros([N, V]);
    crossEntropyBackward(d, logits, targets, scale);
    checkGrad(f, logits.f32, d.f32, { samples: 40, what: `N=${N} V=${V} scale=${scale}` });
  }
});

test('a target outside [0, V) other than -100 throws a RangeError naming the row', () => {
  const rng = new Rng(38);
  const N = 4, V = 17;
  const logits = randn(rng, [N, V]);
  for (const bad of [V, -1, 1 << 30, -101]) {
    const targets = Tensor.fromI32(new Int32Array([0, IGNORE_INDEX, bad, 3]));
    const losses = Tensor.zeros([N]);
    losses.f32.fill(7);
    assert.throws(
      () => crossEntropyForward(losses, logits, targets),
      (e: Error) => e instanceof RangeError && /crossEntropyForward/.test(e.message) && /row 2/.test(e.message) && e.message.includes(String(bad)),
    );
    assert.deepEqual([...losses.f32], [7, 7, 7, 7], 'nothing written before the error');
    const d = Tensor.zeros([N, V]);
    assert.throws(
      () => crossEntropyBackward(d, logits, targets, 1),
      (e: Error) => e instanceof RangeError && /crossEntropyBackward/.test(e.message) && /row 2/.test(e.message),
    );
    assert.throws(() => crossEntropyForwardRef(losses, logits, targets), (e: Error) => e instanceof RangeError && /row 2/.test(e.message));
  }
});

test('shape and dtype errors name the argument', () => {
  const logits = Tensor.zeros([4, 9]);
  const targets = Tensor.zeros([4], 'i32');
  const losses = Tensor.zeros([4]);
  assert.throws(() => crossEntropyForward(losses, logits, Tensor.zeros([4])), (e: Error) => e instanceof TypeError && /argument 'targets'/.test(e.message));
  assert.throws(() => crossEntropyForward(losses, logits, Tensor.zeros([5], 'i32')), (e: Error) => e instanceof RangeError && /argument 'targets'/.test(e.message));
  assert.throws(() => crossEntropyForward(Tensor.zeros([3]), logits, targets), (e: Error) => e instanceof RangeError && /argument 'losses'/.test(e.message));
  assert.throws(() => crossEntropyForward(losses, Tensor.zeros([36]), targets), (e: Error) => e instanceof RangeError && /argument 'logits'/.test(e.message));
  assert.throws(() => crossEntropyForward(losses, Tensor.zeros([4, 9], 'i32'), targets), (e: Error) => e instanceof TypeError && /argument 'logits'/.test(e.message));
  assert.throws(() => crossEntropyBackward(Tensor.zeros([4, 8]), logits, targets, 1), (e: Error) => e instanceof RangeError && /argument 'dlogits'/.test(e.message));
  const buf = new Float32Array(80);
  const x = Tensor.fromF32(buf.subarray(0, 36), [4, 9]);
  const y = Tensor.fromF32(buf.subarray(9, 45), [4, 9]);
  assert.throws(() => crossEntropyBackward(y, x, targets, 1), (e: Error) => e instanceof RangeError && /overlaps/.test(e.message));
});

const LOSS_TOL = { atol: 2e-6, rtol: 2e-6 };
const gradTol = (scale: number) => ({ atol: 1e-7 * Math.abs(scale), rtol: 1e-5 });

/** The f32 contents of a device array. */
const host = (a: unknown): Float32Array => downloadDevice<Float32Array>(a as DeviceArray);

/** The loss scale record of the fused op, holding `scale`, freed with the test's arrays. */
function lossScaleRecord(b: OnBackend, scale: number, free: (() => void)[]): unknown {
  const record = b.be.lossScale();
  free.push(() => record.free());
  b.be.writeLossScale(record.value, scale);
  return record.value;
}

/**
 * Forward and fused forward+backward (out of place over garbage, and in place) against the
 * twin; on CUDA also the separate backward wrapper, bit for bit with the fused op.
 */
function compareOnBackend(b: OnBackend, logits: Tensor, targets: Tensor, scale: number, what: string): void {
  const N = targets.size, V = logits.dim(-1);
  const losses = Tensor.zeros([N]), d = Tensor.zeros([N, V]);
  crossEntropyForwardRef(losses, logits, targets);
  crossEntropyBackwardRef(d, logits, targets, scale);
  const free: (() => void)[] = [];
  try {
    const gx = b.upload(logits.f32), gt = b.upload(targets.i32), gl = b.upload(new Float32Array(N).fill(9));
    b.be.crossEntropyForward(gl, gx, gt, N, V, { check: true });
    const forwardLosses = b.download(gl);
    assertClose(forwardLosses, losses.f32, { ...LOSS_TOL, what: `${what} losses` });

    const record = lossScaleRecord(b, scale, free);
    const gl2 = b.upload(new Float32Array(N).fill(5)), gd2 = b.upload(new Float32Array(N * V).fill(5)); // must be overwritten
    b.be.crossEntropyForwardBackward(gl2, gd2, gx, gt, N, V, record, { check: true });
    const fusedLosses = b.download(gl2), fused = b.download(gd2);
    assertClose(fusedLosses, losses.f32, { ...LOSS_TOL, what: `${what} fused losses` });
    assertClose(fused, d.f32, { ...gradTol(scale), what: `${what} fused dlogits` });
    const inPlace = b.upload(logits.f32), gl3 = b.alloc('f32', N);
    b.be.crossEntropyForwardBackward(gl3, inPlace, inPlace, gt, N, V, record, { check: true });
    assertBitExact(b.download(gl3), fusedLosses, `${what} in-place fused losses`);
    assertBitExact(b.download(inPlace), fused, `${what} in-place fused dlogits`);
    if (b.name === 'cpu') return;

    assertBitExact(fusedLosses, forwardLosses, `${what} fused losses = forward losses`);
    const gd = b.upload(new Float32Array(N * V).fill(123)); // must be overwritten
    crossEntropyBackwardCuda(gd as DeviceArray, gx as DeviceArray, gt as DeviceArray, N, V, scale);
    assertBitExact(host(gd), fused, `${what} backward dlogits = fused dlogits`);
    const inPlaceBackward = b.upload(logits.f32) as DeviceArray;
    crossEntropyBackwardCuda(inPlaceBackward, inPlaceBackward, gt as DeviceArray, N, V, scale);
    assertBitExact(host(inPlaceBackward), fused, `${what} in-place backward dlogits`);
  } finally {
    for (const f of free) f();
  }
}

forEachBackend('cross-entropy forward and fused forward+backward match the twin on odd shapes', (b) => {
  const rng = new Rng(51);
  for (const N of [1, 3, 17]) {
    for (const V of [...ODD_SIZES, 1000, 4101]) {
      compareOnBackend(b, randn(rng, [N, V], 3), randomTargets(rng, N, V, N > 1 ? 3 : 0), 1 / N, `N=${N} V=${V}`);
    }
  }
  const N = 5, V = 32_003; // rows longer than a CUDA block, many block-strided passes
  compareOnBackend(b, randn(rng, [N, V], 4), randomTargets(rng, N, V, 2), 1 / 17, `N=${N} V=${V}`);
});

forEachBackend('cross-entropy: extreme, masked (-inf) and uniform logits, all rows ignored', (b) => {
  const rng = new Rng(52);
  const N = 6, V = 1001;
  const logits = randn(rng, [N, V], 1);
  const x = logits.f32;
  for (let i = 0; i < V; i++) x[0 * V + i] = x[0 * V + i]! * 1e4;
  for (let i = 0; i < V; i++) x[1 * V + i] = x[1 * V + i]! + 5e3;
  for (let i = 0; i < V; i += 2) x[2 * V + i] = -Infinity;
  for (let i = 0; i < V; i++) x[3 * V + i] = 0;
  x[4 * V + 7] = 1e5;
  const targets = Tensor.fromI32(new Int32Array([3, 500, 1, 7, 7, 0]));
  compareOnBackend(b, logits, targets, 1, 'extreme');
  const gl = b.alloc('f32', N);
  b.be.crossEntropyForward(gl, b.upload(x), b.upload(targets.i32), N, V, { check: true });
  const l = b.download(gl);
  assertClose([l[3]!], [Math.log(V)], { atol: 1e-6, rtol: 1e-6, what: 'uniform row loss = log V' });
  assert.equal(l[4], 0, 'a dominant correct logit gives loss 0');
  const all = b.upload(new Int32Array(N).fill(IGNORE_INDEX)), gd = b.upload(new Float32Array(N * V).fill(7));
  const free: (() => void)[] = [];
  try {
    b.be.crossEntropyForwardBackward(gl, gd, b.upload(x), all, N, V, lossScaleRecord(b, 1, free), { check: true });
  } finally {
    for (const f of free) f();
  }
  assert.deepEqual([...b.download(gl)], new Array(N).fill(0));
  assert.ok(b.download(gd).every((g) => Object.is(g, 0)), 'ignored rows get +0 gradients');
});

const opNames = (b: OnBackend): { embedding: string; crossEntropy: string } =>
  b.name === 'cpu'
    ? { embedding: 'embeddingForward', crossEntropy: 'crossEntropyForwardBackward' }
    : { embedding: 'embeddingForwardCuda', crossEntropy: 'crossEntropyForwardBackwardCuda' };

forEachBackend('checkTrainingTokens refuses the first bad id, then the first bad target, with the op\'s error', (b) => {
  const V = 11;
  const { embedding, crossEntropy } = opNames(b);
  const ids = Int32Array.from([1, 2, 3, 4, 5]), targets = Int32Array.from([2, 3, IGNORE_INDEX, 5, 0]);
  b.be.checkTrainingTokens(ids, targets, V); // valid, -100 included
  ids[3] = V;
  targets[1] = -1; // an earlier bad target: the ids are checked first
  assert.throws(() => b.be.checkTrainingTokens(ids, targets, V), new RegExp(`^RangeError: ${embedding}: argument 'ids': id ${V} at row 3 is outside \\[0, ${V}\\)$`));
  ids[3] = 4;
  assert.throws(
    () => b.be.checkTrainingTokens(ids, targets, V),
    new RegExp(`^RangeError: ${crossEntropy}: argument 'targets': row 1 has target -1, outside \\[0, ${V}\\) and not the ignore index -100$`),
  );
  assert.throws(() => b.be.checkTrainingTokens(ids, targets.subarray(1), V), /checkTrainingTokens: 5 ids but 4 targets/);
});

forEachBackend('crossEntropyForwardBackward takes its gradient scale from the record, rewritten between calls, in place, as the twin', (b) => {
  const rng = new Rng(3);
  const record = b.be.lossScale();
  try {
    for (const [N, V, scale] of [[1, 1, 1], [5, 33, 0.25], [17, 130, 1 / 37], [3, 7, 0]] as const) {
      const logits = randn(rng, [N, V], 3);
      const targets = Tensor.zeros([N], 'i32');
      for (let r = 0; r < N; r++) targets.i32[r] = r % 3 === 1 ? IGNORE_INDEX : rng.int(0, V);
      const lossesRef = Tensor.zeros([N]), dRef = Tensor.zeros([N, V]);
      crossEntropyForwardBackwardRef(lossesRef, dRef, logits, targets, scale);
      b.be.writeLossScale(record.value, scale);
      const glogits = b.upload(logits.f32), losses = b.alloc('f32', N);
      b.be.crossEntropyForwardBackward(losses, glogits, glogits, b.upload(targets.i32), N, V, record.value, { check: true });
      assertClose(b.download(losses), lossesRef.f32, { ...LOSS_TOL, what: `losses N=${N} V=${V}` });
      assertClose(b.download(glogits), dRef.f32, { ...gradTol(scale), what: `dlogits N=${N} V=${V} scale ${scale}` });
    }
    assert.throws(() => b.be.writeLossScale(record.value, NaN), /writeLossScale: scale must be a finite number, got NaN/);
  } finally {
    record.free();
  }
});

/** Runs body with a scope of device arrays freed after it (the CUDA wrapper cases). */
function onDevice(body: (s: DeviceAllocations) => void): void {
  const s = new DeviceAllocations();
  try {
    body(s);
  } finally {
    s.free();
  }
}

forEachCudaBackend('cross-entropy: a bad target throws naming the row before anything is written; check: false gives NaN rows', () =>
  onDevice((s) => {
    const rng = new Rng(53);
    const N = 4, V = 17;
    const gx = s.upload(randn(rng, [N, V]).f32);
    const one = s.adopt(allocLossScale());
    writeLossScale(one, 1);
    for (const bad of [V, -1, 1 << 30, -101]) {
      const gt = s.upload(new Int32Array([0, IGNORE_INDEX, bad, 3]));
      const gl = s.upload(new Float32Array(N).fill(7)), gd = s.upload(new Float32Array(N * V).fill(7));
      const message = (op: string) => (e: Error) =>
        e instanceof RangeError && e.message === `${op}: argument 'targets': row 2 has target ${bad}, outside [0, ${V}) and not the ignore index -100`;
      assert.throws(() => crossEntropyForwardCuda(gl, gx, gt, N, V), message('crossEntropyForwardCuda'));
      assert.throws(() => crossEntropyBackwardCuda(gd, gx, gt, N, V, 1), message('crossEntropyBackwardCuda'));
      assert.throws(() => crossEntropyForwardBackwardCuda(gl, gd, gx, gt, N, V, one), message('crossEntropyForwardBackwardCuda'));
      assert.deepEqual([...host(gl)], [7, 7, 7, 7], 'losses untouched');
      assert.ok(host(gd).every((v) => v === 7), 'dlogits untouched');
      crossEntropyForwardBackwardCuda(gl, gd, gx, gt, N, V, one, { check: false });
      const l = host(gl), d = host(gd);
      assert.ok(Number.isNaN(l[2]) && Number.isFinite(l[0]) && l[1] === 0 && Number.isFinite(l[3]), `unchecked losses ${[...l]}`);
      assert.ok(d.subarray(2 * V, 3 * V).every(Number.isNaN) && d.subarray(0, 2 * V).every(Number.isFinite), 'unchecked gradient rows');
    }
    // the search finds the first bad row among many, across the block's threads
    const ids = new Int32Array(5000).fill(1);
    ids[4321] = -5;
    ids[777] = 99;
    ids[777 + 3 * 256] = 98; // a later bad id searched by the same thread
    const gids = s.upload(ids);
    assert.deepEqual(firstBadIndexCuda(gids, ids.length, 50), { row: 777, value: 99 });
    assert.deepEqual(firstBadIndexCuda(gids, 777, 50), null);
    assert.deepEqual(firstBadIndexCuda(gids, ids.length, 100), { row: 4321, value: -5 });
    assert.deepEqual(firstBadIndexCuda(gids, ids.length, 100, -5), null);
  }),
);

forEachCudaBackend('cross-entropy wrapper: argument errors name the op and argument', () =>
  onDevice((s) => {
    const x = s.alloc('f32', 12), t = s.alloc('i32', 3), l = s.alloc('f32', 3);
    uploadDevice(t, new Int32Array(3));
    assert.throws(() => crossEntropyForwardCuda(l, x, t, 3, 5), /crossEntropyForwardCuda: argument 'logits': expected 15 elements/);
    assert.throws(() => crossEntropyForwardCuda(l, x, s.alloc('f32', 3), 3, 4), /argument 'targets': expected a i32 device array/);
    assert.throws(() => crossEntropyForwardCuda(s.alloc('f32', 2), x, t, 3, 4), /crossEntropyForwardCuda: argument 'losses': expected 3 elements/);
    assert.throws(() => crossEntropyBackwardCuda(s.alloc('f32', 12), x, t, 3, 4, '1' as unknown as number), /argument 'scale' must be a number/);
    const big = s.alloc('f32', 24);
    assert.throws(() => crossEntropyBackwardCuda(deviceView(big, 2, 12), deviceView(big, 0, 12), t, 3, 4, 1), /'dlogits' overlaps 'logits' in part/);
    const scale = s.adopt(allocLossScale());
    assert.throws(() => crossEntropyForwardBackwardCuda(l, l as never, x, t, 3, 4, scale), /argument 'dlogits': expected 12 elements/);
    assert.throws(() => crossEntropyForwardBackwardCuda(l, x, x, t, 3, 4, s.alloc('u8', 4)), /crossEntropyForwardBackwardCuda: argument 'scale': expected 8 elements/);
    assert.throws(() => writeLossScale(scale, NaN), /writeLossScale: scale must be a finite number, got NaN/);
  }),
);
