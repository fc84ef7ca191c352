// AdamW and gradient clipping: one spec on every backend (test/ops/spec.ts) of the fused step
// through the backend's scalars record against the torch-ordered f32 twin over several steps
// (weight decay, bias correction, both lerp branches) on slices of larger arrays; on the CPU op,
// the first step against its closed form, hyperparameter / shape / dtype errors, and
// clipGradNorm in the clip and no-clip cases (torch.nn.utils.clip_grad_norm_ semantics).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { adamwStep, clipGradNorm, gradNorm, type AdamWHyper } from '../../src/ops/adamw.js';
import { adamwStepRef, clipGradNormRef, gradNormRef } from '../../src/ops/ref/adamw.js';
import { assertClose, ODD_SIZES, randn } from '../util.js';
import { assertBitExact } from '../cuda/backends.js';
import { forEachBackend, type OnBackend } from './spec.js';

const PAD = 5, SENTINEL = -777;
const DECAY = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
// beta1 <= 0.5 takes lerp's second form
const LOW_BETA1 = { lr: 3e-3, beta1: 0.3, beta2: 0.95, eps: 1e-6, weightDecay: 0 };

// Tolerances: the CUDA kernel rounds every operation as the twin does, bit for bit. The CPU
// kernel does too in practice; the twin forms lerp's fused multiply-add in f64, whose double
// rounding could in rare cases land one f32 ulp away, so the CPU is allowed two ulps (2^-22
// relative).
const ULP2 = 2 ** -22;

/**
 * Steps of AdamW on the backend and with the twin from the same start (m = v = 0), gradients of
 * growing scale with a zero (v = 0: the denominator is eps). param, grad, m and v are slices
 * [PAD, PAD + n) of arenas whose ends hold sentinels, which no step may touch.
 */
function compareSteps(b: OnBackend, n: number, base: Omit<AdamWHyper, 'step'>, steps: number, seed: number): void {
  const what = `n=${n} beta1=${base.beta1}`;
  const rng = new Rng(seed);
  const p = randn(rng, [n]);
  const arena = (init?: Float32Array): unknown => {
    const whole = new Float32Array(n + 2 * PAD).fill(SENTINEL);
    if (init) whole.set(init, PAD);
    else whole.fill(0, PAD, PAD + n);
    return b.upload(whole);
  };
  const arenas = { param: arena(p.f32), grad: arena(), m: arena(), v: arena() };
  const [param, grad, m, v] = [arenas.param, arenas.grad, arenas.m, arenas.v].map((a) => b.be.view(a, PAD, n));
  const ref = { p: p.clone(), m: Tensor.zeros([n]), v: Tensor.zeros([n]) };
  const scalars = b.be.adamwScalars();
  try {
    for (let step = 1; step <= steps; step++) {
      const g = randn(rng, [n], 0.1 * step);
      if (n > 4) g.f32[3] = 0;
      b.be.upload(grad, g.f32);
      adamwStepRef(ref.p, g, ref.m, ref.v, { ...base, step });
      b.be.writeAdamWScalars(scalars.value, { ...base, step });
      b.be.adamwStep(param, grad, m, v, scalars.value);
    }
  } finally {
    scalars.free();
  }
  for (const [name, got, want] of [['m', m, ref.m], ['v', v, ref.v], ['param', param, ref.p]] as const) {
    const host = new Float32Array(n);
    b.be.download(got, host);
    if (b.name === 'cpu') assertClose(host, want.f32, { atol: 1e-30, rtol: ULP2, what: `${what} ${name}` });
    else assertBitExact(host, want.f32, `${what} ${name}`);
  }
  for (const [name, a] of Object.entries(arenas)) {
    const whole = b.download(a);
    for (const i of [0, PAD - 1, PAD + n, n + 2 * PAD - 1]) assert.equal(whole[i], SENTINEL, `${what} ${name} arena sentinel ${i}`);
  }
}

forEachBackend('adamwStep matches the twin over several steps (weight decay, bias correction), on arena slices', (b) => {
  for (const n of [...ODD_SIZES, 1000, 1_000_003]) compareSteps(b, n, DECAY, n > 100_000 ? 3 : 6, n);
  for (const n of [1, 65, 4099]) compareSteps(b, n, DECAY, 4, 6 + n);
});

forEachBackend('adamwStep matches the twin with beta1 <= 0.5 (lerp second form) and no weight decay', (b) => {
  for (const n of [17, 65, 4099]) compareSteps(b, n, LOW_BETA1, 5, 100 + n);
  compareSteps(b, 33, LOW_BETA1, 4, 39);
});

test('the first step has the closed form p*(1 - lr*wd) - lr*g/(|g| + eps)', () => {
  const rng = new Rng(41);
  const n = 33;
  const p = randn(rng, [n]);
  const p0 = p.f32.slice();
  const g = randn(rng, [n]);
  const m = Tensor.zeros([n]);
  const v = Tensor.zeros([n]);
  const h: AdamWHyper = { lr: 0.01, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.05, step: 1 };
  adamwStep(p, g, m, v, h);
  const want = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const gi = g.f32[i]!;
    want[i] = p0[i]! * (1 - h.lr * h.weightDecay) - (h.lr * gi) / (Math.abs(gi) + h.eps);
  }
  assertClose(p.f32, want, { atol: 1e-6, rtol: 1e-6, what: 'param after step 1' });
  assertClose(m.f32, g.f32.map((x) => 0.1 * x), { atol: 1e-8, rtol: 1e-6, what: 'm after step 1' });
  assertClose(v.f32, g.f32.map((x) => 0.001 * x * x), { atol: 1e-12, rtol: 1e-6, what: 'v after step 1' });
});

test('adamwStep rejects bad hyperparameters, shapes, dtypes and shared storage', () => {
  const t = (): Tensor => Tensor.zeros([5]);
  const ok: AdamWHyper = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 };
  for (const [key, value] of [
    ['step', 0],
    ['step', 1.5],
    ['beta1', 1],
    ['beta2', -0.1],
    ['lr', NaN],
    ['eps', -1],
    ['weightDecay', Infinity],
  ] as const) {
    assert.throws(
      () => adamwStep(t(), t(), t(), t(), { ...ok, [key]: value }),
      (e: Error) => e instanceof RangeError && e.message.includes(`adamwStep: hyperparameter '${key}'`),
      `${key} = ${value}`,
    );
  }
  assert.throws(() => adamwStep(t(), Tensor.zeros([6]), t(), t(), ok), (e: Error) => e instanceof RangeError && /adamwStep: argument 'grad'/.test(e.message));
  assert.throws(() => adamwStep(t(), t(), t(), Tensor.zeros([5, 1]), ok), (e: Error) => e instanceof RangeError && /adamwStep: argument 'v'/.test(e.message));
  assert.throws(() => adamwStep(t(), t(), Tensor.zeros([5], 'i32'), t(), ok), (e: Error) => e instanceof TypeError && /adamwStep: argument 'm'/.test(e.message));
  const shared = t();
  assert.throws(() => adamwStep(t(), t(), shared, shared, ok), (e: Error) => e instanceof RangeError && /'m' and 'v'/.test(e.message));
});

test('gradNorm is the global L2 norm over all tensors', () => {
  const rng = new Rng(42);
  const grads = [randn(rng, [17]), randn(rng, [3, 65]), randn(rng, [100_003])];
  assertClose([gradNorm(grads)], [gradNormRef(grads)], { atol: 0, rtol: 1e-13, what: 'gradNorm' });
  const g = Tensor.fromF32(new Float32Array([3, 4]));
  assert.equal(gradNorm([g]), 5);
  assert.equal(gradNorm([]), 0);
});

test('clipGradNorm: no-clip case leaves gradients untouched and returns the norm', () => {
  const rng = new Rng(43);
  const grads = [randn(rng, [17]), randn(rng, [33, 7])];
  const before = grads.map((g) => g.f32.slice());
  const norm = clipGradNorm(grads, 1e6);
  assertClose([norm], [gradNormRef(grads)], { atol: 0, rtol: 1e-13, what: 'returned norm' });
  grads.forEach((g, i) => assert.deepEqual(g.f32, before[i]));
});

test('clipGradNorm: clip case scales to maxNorm and matches the twin', () => {
  const rng = new Rng(44);
  const grads = [randn(rng, [65], 5), randn(rng, [1000, 3], 5), randn(rng, [200_001])];
  const refGrads = grads.map((g) => g.clone());
  const pre = gradNormRef(grads);
  const norm = clipGradNorm(grads, 1.5);
  const normRef = clipGradNormRef(refGrads, 1.5);
  assertClose([norm], [pre], { atol: 0, rtol: 1e-13, what: 'pre-clip norm returned' });
  assertClose([norm], [normRef], { atol: 0, rtol: 1e-13, what: 'norm vs twin' });
  grads.forEach((g, i) => assertClose(g.f32, refGrads[i]!.f32, { atol: 0, rtol: 0, what: `clipped grads ${i}` }));
  assertClose([gradNorm(grads)], [1.5], { atol: 0, rtol: 1e-6, what: 'norm after clipping' });
});

test('clipGradNorm with a NaN gradient returns NaN (as torch does without error_if_nonfinite)', () => {
  const g = Tensor.fromF32(new Float32Array([1, NaN, 2]));
  assert.ok(Number.isNaN(clipGradNorm([g], 1)));
  assert.throws(() => clipGradNorm([g], -1), (e: Error) => e instanceof RangeError && /clipGradNorm: argument 'maxNorm'/.test(e.message));
});
