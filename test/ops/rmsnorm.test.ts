// RMSNorm: native against the TypeScript twin on odd shapes (ranks 2-4, threaded sizes),
// accumulation into pre-filled gradients, backward against finite differences of an f64
// forward, and argument errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { rmsnormBackward, rmsnormForward } from '../../src/ops/rmsnorm.js';
import { rmsnormBackwardRef, rmsnormForwardRef } from '../../src/ops/ref/rmsnorm.js';
import { assertClose, checkGrad, randn } from '../util.js';

const EPS = 1e-5;
const NS = [1, 3, 17, 65];
const CS = [1, 7, 33, 130];

function weightLike(rng: Rng, C: number): Tensor {
  const w = Tensor.zeros([C]);
  rng.fillNormal(w.f32, 0.2, 1);
  return w;
}

/** Runs native and twin forward on x and compares out and rstd. */
function compareForward(x: Tensor, w: Tensor, what: string): { out: Tensor; rstd: Tensor } {
  const lead = x.shape.slice(0, -1);
  const out = Tensor.zeros(x.shape), rstd = Tensor.zeros(lead);
  const outRef = Tensor.zeros(x.shape), rstdRef = Tensor.zeros(lead);
  rmsnormForward(out, rstd, x, w, EPS);
  rmsnormForwardRef(outRef, rstdRef, x, w, EPS);
  assertClose(rstd.f32, rstdRef.f32, { atol: 1e-6, rtol: 1e-5, what: `${what} rstd` });
  assertClose(out.f32, outRef.f32, { atol: 1e-6, rtol: 1e-5, what: `${what} out` });
  return { out, rstd };
}

/** Runs native and twin backward into gradients pre-filled with the same random values. */
function compareBackward(rng: Rng, x: Tensor, w: Tensor, rstd: Tensor, what: string): void {
  const C = w.size;
  const dout = randn(rng, x.shape);
  const dx0 = randn(rng, x.shape), dw0 = randn(rng, [C]);
  const dx = dx0.clone(), dw = dw0.clone(), dxRef = dx0.clone(), dwRef = dw0.clone();
  rmsnormBackward(dx, dw, dout, x, w, rstd);
  rmsnormBackwardRef(dxRef, dwRef, dout, x, w, rstd);
  assertClose(dx.f32, dxRef.f32, { atol: 1e-5, rtol: 1e-4, what: `${what} dx` });
  // dweight sums one term per row: its rounding grows with the row count.
  assertClose(dw.f32, dwRef.f32, { atol: 1e-5 * Math.sqrt(x.size / C), rtol: 1e-4, what: `${what} dweight` });
}

test('rmsnorm: native matches the twin on odd shapes (forward and accumulating backward)', () => {
  const rng = new Rng(11);
  for (const N of NS) {
    for (const C of CS) {
      const x = randn(rng, [N, C]);
      const w = weightLike(rng, C);
      const { rstd } = compareForward(x, w, `N=${N} C=${C}`);
      compareBackward(rng, x, w, rstd, `N=${N} C=${C}`);
    }
  }
});

test('rmsnorm: large-magnitude and tiny rows stay accurate', () => {
  const rng = new Rng(12);
  const x = randn(rng, [4, 33]);
  for (let c = 0; c < 33; c++) {
    x.f32[c] = x.f32[c]! * 1000;
    x.f32[33 + c] = x.f32[33 + c]! * 1e-3;
  }
  const w = weightLike(rng, 33);
  const { rstd } = compareForward(x, w, 'scaled rows');
  compareBackward(rng, x, w, rstd, 'scaled rows');
});

test('rmsnorm: rank-3 (B, T, C) and per-head (B, T, H, D) inputs with a (D) weight', () => {
  const rng = new Rng(13);
  const x3 = randn(rng, [2, 5, 33]);
  const w3 = weightLike(rng, 33);
  const r3 = compareForward(x3, w3, '(B,T,C)');
  compareBackward(rng, x3, w3, r3.rstd, '(B,T,C)');
  // The Qwen3 q/k norm: every head of every token normalised over D with one (D) weight.
  const x4 = randn(rng, [2, 3, 4, 6]);
  const w4 = weightLike(rng, 6);
  const r4 = compareForward(x4, w4, '(B,T,H,D)');
  compareBackward(rng, x4, w4, r4.rstd, '(B,T,H,D)');
  // A flat (rows) rstd is accepted too, and the same values come out.
  const flat = Tensor.zeros([2 * 3 * 4]);
  rmsnormForward(Tensor.zeros(x4.shape), flat, x4, w4, EPS);
  assert.deepEqual(flat.f32, r4.rstd.f32);
});

test('rmsnorm: sizes that split across threads match the twin', () => {
  const rng = new Rng(14);
  for (const [N, C] of [[300, 130], [1031, 17]] as const) {
    const x = randn(rng, [N, C]);
    const w = weightLike(rng, C);
    const { rstd } = compareForward(x, w, `N=${N} C=${C}`);
    compareBackward(rng, x, w, rstd, `N=${N} C=${C}`);
  }
});

test('rmsnorm: backward accumulates into pre-filled gradients', () => {
  const rng = new Rng(15);
  const x = randn(rng, [17, 33]);
  const w = weightLike(rng, 33);
  const out = Tensor.zeros(x.shape), rstd = Tensor.zeros([17]);
  rmsnormForward(out, rstd, x, w, EPS);
  const dout = randn(rng, x.shape);
  const dx = Tensor.zeros(x.shape), dw = Tensor.zeros([33]);
  rmsnormBackward(dx, dw, dout, x, w, rstd);
  const dx2 = dx.clone(), dw2 = dw.clone();
  rmsnormBackward(dx2, dw2, dout, x, w, rstd);
  assertClose(dx2.f32, dx.f32.map((v) => 2 * v), { atol: 1e-6, rtol: 1e-6, what: 'dx twice' });
  assertClose(dw2.f32, dw.f32.map((v) => 2 * v), { atol: 1e-6, rtol: 1e-6, what: 'dweight twice' });
});

test('rmsnorm: in place (out = x) gives the out-of-place result', () => {
  const rng = new Rng(16);
  const x = randn(rng, [17, 130]);
  const w = weightLike(rng, 130);
  const out = Tensor.zeros(x.shape), rstd = Tensor.zeros([17]);
  rmsnormForward(out, rstd, x, w, EPS);
  const y = x.clone();
  rmsnormForward(y, Tensor.zeros([17]), y, w, EPS);
  assert.deepEqual(y.f32, out.f32);
});

/** sum(R * rmsnorm(x, w)) in f64, independent of the kernels. */
function lossF64(x: Float32Array, w: Float32Array, R: Float32Array, N: number, C: number): number {
  let loss = 0;
  for (let n = 0; n < N; n++) {
    let ss = 0;
    for (let c = 0; c < C; c++) ss += x[n * C + c]! * x[n * C + c]!;
    const rs = 1 / Math.sqrt(ss / C + EPS);
    for (let c = 0; c < C; c++) loss += R[n * C + c]! * w[c]! * x[n * C + c]! * rs;
  }
  return loss;
}

test('rmsnorm: backward matches finite differences (native and twin)', () => {
  const rng = new Rng(17);
  for (const [N, C] of [[3, 7], [2, 33], [5, 130]] as const) {
    const x = randn(rng, [N, C]);
    const w = weightLike(rng, C);
    const R = randn(rng, [N, C]);
    const f = (): number => lossF64(x.f32, w.f32, R.f32, N, C);
    for (const [fwd, bwd, name] of [
      [rmsnormForward, rmsnormBackward, 'native'],
      [rmsnormForwardRef, rmsnormBackwardRef, 'twin'],
    ] as const) {
      const out = Tensor.zeros([N, C]), rstd = Tensor.zeros([N]);
      fwd(out, rstd, x, w, EPS);
      const dx = Tensor.zeros([N, C]), dw = Tensor.zeros([C]);
      bwd(dx, dw, R, x, w, rstd);
      // eps = 2^-10 keeps x +- eps exact in f32; the f64 loss leaves only O(eps^2) truncation.
      const opts = { eps: 2 ** -10, atol: 2e-5, rtol: 1e-3 };
      checkGrad(f, x.f32, dx.f32, { ...opts, what: `${name} dx N=${N} C=${C}` });
      checkGrad(f, w.f32, dw.f32, { ...opts, what: `${name} dweight N=${N} C=${C}` });
    }
  }
});

test('rmsnorm: shape and dtype errors name the op and argument', () => {
  const x = Tensor.zeros([3, 8]), w = Tensor.zeros([8]), out = Tensor.zeros([3, 8]), rstd = Tensor.zeros([3]);
  const bad: Array<[() => void, RegExp, ErrorConstructor]> = [
    [() => rmsnormForward(out, rstd, x, Tensor.zeros([7]), EPS), /rmsnormForward: weight/, RangeError],
    [() => rmsnormForward(Tensor.zeros([3, 7]), rstd, x, w, EPS), /rmsnormForward: out/, RangeError],
    [() => rmsnormForward(out, Tensor.zeros([4]), x, w, EPS), /rmsnormForward: rstd/, RangeError],
    [() => rmsnormForward(Tensor.zeros([24]), rstd, Tensor.zeros([24]), w, EPS), /rmsnormForward: x/, RangeError],
    [() => rmsnormForward(out, rstd, Tensor.zeros([3, 8], 'i32'), w, EPS), /rmsnormForward: x/, TypeError],
    [() => rmsnormForward(out, rstd, x, w, -1), /rmsnormForward: eps/, RangeError],
    [() => rmsnormBackward(Tensor.zeros([3, 7]), w, out, x, w, rstd), /rmsnormBackward: dx/, RangeError],
    [() => rmsnormBackward(out, Tensor.zeros([9]), out, x, w, rstd), /rmsnormBackward: dweight/, RangeError],
    [() => rmsnormBackward(out, w, Tensor.zeros([8, 3]), x, w, rstd), /rmsnormBackward: dout/, RangeError],
    [() => rmsnormBackward(out, w, out, x, w, Tensor.zeros([3, 1])), /rmsnormBackward: rstd/, RangeError],
    [() => rmsnormForwardRef(out, rstd, x, Tensor.zeros([7]), EPS), /rmsnormForwardRef: weight/, RangeError],
    [() => rmsnormBackwardRef(out, w, out, x, w, Tensor.zeros([2])), /rmsnormBackwardRef: rstd/, RangeError],
  ];
  for (const [fn, message, type] of bad) assert.throws(fn, (e: unknown) => e instanceof type && message.test((e as Error).message));
});
