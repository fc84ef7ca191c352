// Softmax cross-entropy: forward and backward against the f64 twin on odd vocabulary sizes
// (block and vector tails included), extreme and masked (-inf) logits, ignored rows, in-place
// backward, finite differences of scale * sum(losses), the out-of-range target error and the
// wrappers' shape and dtype errors.
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
import { assertClose, checkGrad, ODD_SIZES, randn } from '../util.js';

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
