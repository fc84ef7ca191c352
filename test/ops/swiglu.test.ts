// SwiGLU: native against the TypeScript twin on odd shapes and threaded sizes, the vector exp
// across the whole f32 range of the gate, accumulation into pre-filled gradients, backward
// against finite differences of an f64 forward, and argument errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { swigluBackward, swigluForward } from '../../src/ops/swiglu.js';
import { swigluBackwardRef, swigluForwardRef } from '../../src/ops/ref/swiglu.js';
import { assertClose, checkGrad, randn } from '../util.js';

// Forward: a few f32 roundings plus the vector exp (within ~2 ulp) on each side.
const FWD = { atol: 1e-30, rtol: 1e-6 };
// Backward: silu'(g) = s * (1 + g * (1 - s)) cancels near g = -2.4, so errors are absolute
// at the scale of |dout * up|.
const BWD = { atol: 1e-6, rtol: 1e-5 };

function compare(rng: Rng, shape: number[], gateStd = 3): void {
  const what = `[${shape.join(', ')}]`;
  const gate = randn(rng, shape, gateStd), up = randn(rng, shape);
  const out = Tensor.zeros(shape), outRef = Tensor.zeros(shape);
  swigluForward(out, gate, up);
  swigluForwardRef(outRef, gate, up);
  assertClose(out.f32, outRef.f32, { ...FWD, what: `${what} out` });
  const dout = randn(rng, shape);
  const dg0 = randn(rng, shape), du0 = randn(rng, shape);
  const dg = dg0.clone(), du = du0.clone(), dgRef = dg0.clone(), duRef = du0.clone();
  swigluBackward(dg, du, dout, gate, up);
  swigluBackwardRef(dgRef, duRef, dout, gate, up);
  assertClose(dg.f32, dgRef.f32, { ...BWD, what: `${what} dgate` });
  assertClose(du.f32, duRef.f32, { ...BWD, what: `${what} dup` });
}

test('swiglu: native matches the twin on odd shapes (forward and accumulating backward)', () => {
  const rng = new Rng(31);
  for (const N of [1, 3, 17, 65]) {
    for (const F of [1, 7, 33, 130]) compare(rng, [N, F]);
  }
  compare(rng, [2, 5, 33]);
});

test('swiglu: sizes that split across threads match the twin', () => {
  const rng = new Rng(32);
  compare(rng, [65, 1000]);
  compare(rng, [3, 17, 1031]);
});

test('swiglu: silu is accurate across the whole gate range (vector exp)', () => {
  // 40001 gates from -100 to 100, up = 1: out = silu(gate), compared in relative terms
  // wherever silu is a normal f32, including the saturated tails.
  const n = 40001;
  const gate = Tensor.zeros([1, n]), up = Tensor.zeros([1, n]);
  for (let i = 0; i < n; i++) gate.f32[i] = -100 + (200 * i) / (n - 1);
  up.f32.fill(1);
  const out = Tensor.zeros([1, n]), outRef = Tensor.zeros([1, n]);
  swigluForward(out, gate, up);
  swigluForwardRef(outRef, gate, up);
  assertClose(out.f32, outRef.f32, { ...FWD, what: 'silu' });
  // Exact points: silu(0) = 0 and large positive gates pass through.
  const z = Tensor.zeros([1, 3]);
  swigluForward(z, Tensor.fromF32(new Float32Array([0, 50, 90]), [1, 3]), Tensor.fromF32(new Float32Array([1, 1, 1]), [1, 3]));
  assert.deepEqual([...z.f32], [0, 50, 90]);
  // The gradient over the same range.
  const dout = Tensor.zeros([1, n]);
  dout.f32.fill(1);
  const dg = Tensor.zeros([1, n]), du = Tensor.zeros([1, n]), dgRef = Tensor.zeros([1, n]), duRef = Tensor.zeros([1, n]);
  swigluBackward(dg, du, dout, gate, up);
  swigluBackwardRef(dgRef, duRef, dout, gate, up);
  assertClose(dg.f32, dgRef.f32, { ...BWD, what: "silu'" });
  assertClose(du.f32, duRef.f32, { ...FWD, what: 'silu (from backward)' });
});

test('swiglu: backward accumulates into pre-filled gradients', () => {
  const rng = new Rng(33);
  const gate = randn(rng, [17, 33], 3), up = randn(rng, [17, 33]), dout = randn(rng, [17, 33]);
  const dg = Tensor.zeros([17, 33]), du = Tensor.zeros([17, 33]);
  swigluBackward(dg, du, dout, gate, up);
  const dg2 = dg.clone(), du2 = du.clone();
  swigluBackward(dg2, du2, dout, gate, up);
  // The second call adds exactly the same values again: G + G = 2G with no rounding.
  assert.deepEqual(dg2.f32, dg.f32.map((v) => 2 * v));
  assert.deepEqual(du2.f32, du.f32.map((v) => 2 * v));
  assert.ok(dg.f32.some((v) => v !== 0));
});

/** sum(R * silu(gate) * up) in f64, independent of the kernels. */
function lossF64(gate: Float32Array, up: Float32Array, R: Float32Array): number {
  let loss = 0;
  for (let i = 0; i < gate.length; i++) loss += (R[i]! * gate[i]! * up[i]!) / (1 + Math.exp(-gate[i]!));
  return loss;
}

test('swiglu: backward matches finite differences (native and twin)', () => {
  const rng = new Rng(34);
  for (const shape of [[3, 7], [5, 33]]) {
    const gate = randn(rng, shape, 3), up = randn(rng, shape), R = randn(rng, shape);
    const f = (): number => lossF64(gate.f32, up.f32, R.f32);
    for (const [bwd, name] of [[swigluBackward, 'native'], [swigluBackwardRef, 'twin']] as const) {
      const dg = Tensor.zeros(shape), du = Tensor.zeros(shape);
      bwd(dg, du, R, gate, up);
      // eps = 2^-10 keeps gate +- eps exact in f32; truncation error is O(eps^2 * silu''').
      const opts = { eps: 2 ** -10, atol: 1e-5, rtol: 1e-4, samples: 40 };
      checkGrad(f, gate.f32, dg.f32, { ...opts, what: `${name} dgate ${shape}` });
      checkGrad(f, up.f32, du.f32, { ...opts, what: `${name} dup ${shape}` });
    }
  }
});

test('swiglu: shape and dtype errors name the op and argument', () => {
  const a = Tensor.zeros([3, 8]);
  const bad: Array<[() => void, RegExp, ErrorConstructor]> = [
    [() => swigluForward(a, a, Tensor.zeros([3, 7])), /swigluForward: up/, RangeError],
    [() => swigluForward(Tensor.zeros([8, 3]), a, a), /swigluForward: out/, RangeError],
    [() => swigluForward(Tensor.zeros([8]), Tensor.zeros([8]), Tensor.zeros([8])), /swigluForward: gate/, RangeError],
    [() => swigluForward(a, Tensor.zeros([3, 8], 'i32'), a), /swigluForward: gate/, TypeError],
    [() => swigluBackward(a, Tensor.zeros([3, 9]), a, a, a), /swigluBackward: dup/, RangeError],
    [() => swigluBackward(a, a, Tensor.zeros([24, 1]), a, a), /swigluBackward: dout/, RangeError],
    [() => swigluBackwardRef(Tensor.zeros([3, 1]), a, a, a, a), /swigluBackwardRef: dgate/, RangeError],
  ];
  for (const [fn, message, type] of bad) assert.throws(fn, (e: unknown) => e instanceof type && message.test((e as Error).message));
});
