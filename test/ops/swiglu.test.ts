// SwiGLU, one spec on every backend (test/ops/spec.ts): forward and the accumulating backward
// against the TypeScript twin on odd shapes and threaded sizes (on CUDA also into a bf16
// output: the bf16 rounding of the f32 output, bit for bit), the exp across the whole f32
// range of the gate, accumulation into pre-filled gradients; backward against finite
// differences of an f64 forward; the argument errors of the CPU op and of the CUDA wrapper.
//
// Error bounds, the same on every backend: FWD for the forward (a few f32 roundings plus the
// exp, within ~2 ulp, on each side); BWD for the backward: silu'(g) = s * (1 + g * (1 - s))
// cancels near g = -2.4, so errors are absolute at the scale of |dout * up|.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { f32ToBf16Ref } from '../../src/engine/dtype.js';
import { downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { swigluBackward, swigluForward } from '../../src/ops/swiglu.js';
import { swigluBackwardRef, swigluForwardRef } from '../../src/ops/ref/swiglu.js';
import { swigluForwardCuda } from '../../src/ops/cuda/swiglu.js';
import { assertClose, checkGrad, ODD_SIZES, randn } from '../util.js';
import { assertBitExact, testOnBackends } from '../cuda/backends.js';
import { forEachBackend, type OnBackend } from './spec.js';

const FWD = { atol: 1e-30, rtol: 1e-6 };
const BWD = { atol: 1e-6, rtol: 1e-5 };

/** out, dgate and dup of the backend and of the twin, from the same gate, up, dout and pre-filled gradients. */
function run(b: OnBackend, gate: Tensor, up: Tensor, dout: Tensor, dg0: Tensor, du0: Tensor) {
  const [rows, F] = gate.shape as [number, number];
  const want = { out: Tensor.zeros(gate.shape), dgate: dg0.clone(), dup: du0.clone() };
  swigluForwardRef(want.out, gate, up);
  swigluBackwardRef(want.dgate, want.dup, dout, gate, up);
  const gg = b.upload(gate.f32), gu = b.upload(up.f32), gout = b.alloc('f32', gate.size);
  b.be.swigluForward(gout, gg, gu, rows, F);
  const gdg = b.upload(dg0.f32), gdu = b.upload(du0.f32);
  b.be.swigluBackward(gdg, gdu, b.upload(dout.f32), gg, gu, rows, F);
  const got = { out: b.download(gout), dgate: b.download(gdg), dup: b.download(gdu) };
  if (b.name !== 'cpu') {
    // The CUDA kernel also writes a bf16 output (the down projection's input): the rounding of the f32 one.
    const out16 = b.alloc('bf16', gate.size) as DeviceArray;
    swigluForwardCuda(out16, gg as DeviceArray, gu as DeviceArray);
    assertBitExact(downloadDevice<Uint16Array>(out16), Uint16Array.from(got.out, (v) => f32ToBf16Ref(v)), `[${gate.shape}] bf16 out`);
  }
  return { got, want };
}

/** Random gate (std gateStd, gate[0] optionally pinned), up and dout; backward into pre-filled gradients. */
function compare(b: OnBackend, rng: Rng, shape: number[], { gateStd = 3, gate0 }: { gateStd?: number; gate0?: number } = {}): void {
  const what = `[${shape.join(', ')}]`;
  const F = shape[shape.length - 1]!, rows2 = [shape.reduce((p, d) => p * d, 1) / F, F];
  const gate = randn(rng, rows2, gateStd), up = randn(rng, rows2);
  if (gate0 !== undefined) gate.f32[0] = gate0;
  const dout = randn(rng, rows2), dg0 = randn(rng, rows2), du0 = randn(rng, rows2);
  const { got, want } = run(b, gate, up, dout, dg0, du0);
  assertClose(got.out, want.out.f32, { ...FWD, what: `${what} out` });
  assertClose(got.dgate, want.dgate.f32, { ...BWD, what: `${what} dgate` });
  assertClose(got.dup, want.dup.f32, { ...BWD, what: `${what} dup` });
}

forEachBackend('swiglu: matches the twin on odd shapes (forward and accumulating backward)', (b) => {
  const rng = new Rng(31);
  for (const N of [1, 3, 17, 65]) {
    for (const F of [1, 7, 33, 130]) compare(b, rng, [N, F]);
  }
  compare(b, rng, [2, 5, 33]);
});

forEachBackend('swiglu: one row of odd lengths with a gate where silu\' cancels (-2.4) matches the twin', (b) => {
  const rng = new Rng(5);
  for (const n of [...ODD_SIZES, 4099]) compare(b, rng, [1, n], { gate0: -2.4 });
});

forEachBackend('swiglu: sizes that split across threads match the twin', (b) => {
  const rng = new Rng(32);
  compare(b, rng, [65, 1000]);
  compare(b, rng, [3, 17, 1031]);
});

forEachBackend('swiglu: silu is accurate across the whole gate range', (b) => {
  // 40001 gates from -100 to 100, up = 1: out = silu(gate), compared in relative terms
  // wherever silu is a normal f32, including the saturated tails.
  const n = 40001;
  const gate = Tensor.zeros([1, n]), up = Tensor.zeros([1, n]), dout = Tensor.zeros([1, n]);
  for (let i = 0; i < n; i++) gate.f32[i] = -100 + (200 * i) / (n - 1);
  up.f32.fill(1);
  dout.f32.fill(1);
  const { got, want } = run(b, gate, up, dout, Tensor.zeros([1, n]), Tensor.zeros([1, n]));
  assertClose(got.out, want.out.f32, { ...FWD, what: 'silu' });
  // The gradient over the same range.
  assertClose(got.dgate, want.dgate.f32, { ...BWD, what: "silu'" });
  assertClose(got.dup, want.dup.f32, { ...FWD, what: 'silu (from backward)' });
  // Exact points: silu(0) = 0 and large positive gates pass through.
  const z = b.alloc('f32', 3);
  b.be.swigluForward(z, b.upload(new Float32Array([0, 50, 90])), b.upload(new Float32Array([1, 1, 1])), 1, 3);
  assert.deepEqual([...b.download(z)], [0, 50, 90]);
});

forEachBackend('swiglu: backward accumulates into pre-filled gradients', (b) => {
  const rng = new Rng(33);
  const gate = b.upload(randn(rng, [17, 33], 3).f32), up = b.upload(randn(rng, [17, 33]).f32), dout = b.upload(randn(rng, [17, 33]).f32);
  const dg = b.alloc('f32', 17 * 33), du = b.alloc('f32', 17 * 33);
  b.be.swigluBackward(dg, du, dout, gate, up, 17, 33);
  const once = { dg: b.download(dg), du: b.download(du) };
  b.be.swigluBackward(dg, du, dout, gate, up, 17, 33);
  // The second call adds exactly the same values again: G + G = 2G with no rounding.
  assert.deepEqual(b.download(dg), once.dg.map((v) => 2 * v));
  assert.deepEqual(b.download(du), once.du.map((v) => 2 * v));
  assert.ok(once.dg.some((v) => v !== 0));
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

test('swiglu: rank-3 inputs give the rows of the 2-D op', () => {
  const rng = new Rng(35);
  const gate = randn(rng, [2, 5, 33], 3), up = randn(rng, [2, 5, 33]), dout = randn(rng, [2, 5, 33]);
  const out = Tensor.zeros([2, 5, 33]), out2 = Tensor.zeros([10, 33]);
  swigluForward(out, gate, up);
  swigluForward(out2, gate.view([10, 33]), up.view([10, 33]));
  assert.deepEqual(out.f32, out2.f32);
  const dg = Tensor.zeros([2, 5, 33]), du = Tensor.zeros([2, 5, 33]), dg2 = Tensor.zeros([10, 33]), du2 = Tensor.zeros([10, 33]);
  swigluBackward(dg, du, dout, gate, up);
  swigluBackward(dg2, du2, dout.view([10, 33]), gate.view([10, 33]), up.view([10, 33]));
  assert.deepEqual(dg.f32, dg2.f32);
  assert.deepEqual(du.f32, du2.f32);
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

testOnBackends('swiglu wrapper: argument errors name the op and argument', (s) => {
  const a = s.alloc('f32', 7);
  assert.throws(() => swigluForwardCuda(s.alloc('i32', 7), a, a), /swigluForwardCuda: out: expected a f32 device array, got i32/);
});
