// RMSNorm, one spec on every backend (test/ops/spec.ts): forward and the accumulating backward
// against the TypeScript twin on odd shapes, wide-range rows, per-head rows and threaded sizes
// (on CUDA also into a bf16 output: the bf16 rounding of the f32 output, bit for bit);
// accumulation into pre-filled gradients; the CPU op's ranks, flat rstd and in place; backward
// against finite differences of an f64 forward; argument errors.
//
// Error bounds, the same on every backend (both sum in f64, in different orders): out and rstd
// to FWD, dx to BWD; dweight sums one term per row, so its bound grows with sqrt(rows).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { f32ToBf16Ref } from '../../src/engine/dtype.js';
import { downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { rmsnormBackward, rmsnormForward } from '../../src/ops/rmsnorm.js';
import { rmsnormBackwardRef, rmsnormForwardRef } from '../../src/ops/ref/rmsnorm.js';
import { rmsnormForwardCuda } from '../../src/ops/cuda/rmsnorm.js';
import { assertClose, checkGrad, randn } from '../util.js';
import { assertBitExact } from '../cuda/backends.js';
import { forEachBackend, type OnBackend } from './spec.js';

const EPS = 1e-5;
const NS = [1, 3, 17, 65];
const CS = [1, 7, 33, 130];
const FWD = { atol: 1e-6, rtol: 1e-5 };
const BWD = { atol: 1e-5, rtol: 1e-4 };
const dweightTol = (rows: number) => ({ atol: 1e-5 * Math.sqrt(rows), rtol: 1e-4 });

function weightLike(rng: Rng, C: number): Tensor {
  const w = Tensor.zeros([C]);
  rng.fillNormal(w.f32, 0.2, 1);
  return w;
}

/**
 * Forward, then backward into gradients pre-filled with random values, on the backend and with
 * the twin; x is (rows, C) whatever its rank.
 */
function compare(b: OnBackend, rng: Rng, x: Tensor, w: Tensor, what: string): void {
  const C = w.size, rows = x.size / C;
  const x2 = x.view([rows, C]);
  const outRef = Tensor.zeros([rows, C]), rstdRef = Tensor.zeros([rows]);
  rmsnormForwardRef(outRef, rstdRef, x2, w, EPS);
  const gx = b.upload(x.f32), gw = b.upload(w.f32), gout = b.alloc('f32', x.size), grstd = b.alloc('f32', rows);
  b.be.rmsnormForward(gout, grstd, gx, gw, rows, C, EPS);
  const out = b.download(gout);
  assertClose(b.download(grstd), rstdRef.f32, { ...FWD, what: `${what} rstd` });
  assertClose(out, outRef.f32, { ...FWD, what: `${what} out` });
  if (b.name !== 'cpu') {
    // The CUDA kernel also writes a bf16 output (a linear's input): the rounding of the f32 one.
    const out16 = b.alloc('bf16', x.size) as DeviceArray;
    rmsnormForwardCuda(out16, grstd as DeviceArray, gx as DeviceArray, gw as DeviceArray, rows, C, EPS);
    assertBitExact(downloadDevice<Uint16Array>(out16), Uint16Array.from(out, (v) => f32ToBf16Ref(v)), `${what} bf16 out`);
  }

  const dout = randn(rng, [rows, C]);
  const dx = randn(rng, [rows, C]), dw = randn(rng, [C]);
  const gdx = b.upload(dx.f32), gdw = b.upload(dw.f32);
  rmsnormBackwardRef(dx, dw, dout, x2, w, rstdRef);
  b.be.rmsnormBackward(gdx, gdw, b.upload(dout.f32), gx, gw, b.upload(rstdRef.f32), rows, C);
  assertClose(b.download(gdx), dx.f32, { ...BWD, what: `${what} dx` });
  assertClose(b.download(gdw), dw.f32, { ...dweightTol(rows), what: `${what} dweight` });
}

forEachBackend('rmsnorm: matches the twin on odd shapes (forward and accumulating backward)', (b) => {
  const rng = new Rng(11);
  for (const N of NS) {
    for (const C of CS) compare(b, rng, randn(rng, [N, C]), weightLike(rng, C), `N=${N} C=${C}`);
  }
});

forEachBackend('rmsnorm: matches the twin on rows of random scale (1 to 11)', (b) => {
  const rng = new Rng(4);
  for (const [rows, C] of [[1, 1], [3, 7], [17, 33], [65, 130], [5, 300], [2, 1000], [33, 1]] as const) {
    const x = randn(rng, [rows, C], 1 + 10 * rng.next());
    compare(b, rng, x, weightLike(rng, C), `rows=${rows} C=${C}`);
  }
});

forEachBackend('rmsnorm: large-magnitude and tiny rows stay accurate', (b) => {
  const rng = new Rng(12);
  const x = randn(rng, [4, 33]);
  for (let c = 0; c < 33; c++) {
    x.f32[c] = x.f32[c]! * 1000;
    x.f32[33 + c] = x.f32[33 + c]! * 1e-3;
  }
  compare(b, rng, x, weightLike(rng, 33), 'scaled rows');
});

forEachBackend('rmsnorm: (B, T, C) rows, and per-head (B, T, H, D) rows with a (D) weight', (b) => {
  const rng = new Rng(13);
  compare(b, rng, randn(rng, [2, 5, 33]), weightLike(rng, 33), '(B,T,C)');
  // The Qwen3 q/k norm: every head of every token normalised over D with one (D) weight.
  compare(b, rng, randn(rng, [2, 3, 4, 6]), weightLike(rng, 6), '(B,T,H,D)');
});

forEachBackend('rmsnorm: sizes that split across threads match the twin', (b) => {
  const rng = new Rng(14);
  for (const [N, C] of [[300, 130], [1031, 17]] as const) compare(b, rng, randn(rng, [N, C]), weightLike(rng, C), `N=${N} C=${C}`);
});

forEachBackend('rmsnorm: backward accumulates into pre-filled gradients', (b) => {
  const rng = new Rng(15);
  const x = b.upload(randn(rng, [17, 33]).f32), w = b.upload(weightLike(rng, 33).f32);
  const out = b.alloc('f32', 17 * 33), rstd = b.alloc('f32', 17);
  b.be.rmsnormForward(out, rstd, x, w, 17, 33, EPS);
  const dout = b.upload(randn(rng, [17, 33]).f32);
  const dx = b.alloc('f32', 17 * 33), dw = b.alloc('f32', 33);
  b.be.rmsnormBackward(dx, dw, dout, x, w, rstd, 17, 33);
  const once = { dx: b.download(dx), dw: b.download(dw) };
  b.be.rmsnormBackward(dx, dw, dout, x, w, rstd, 17, 33);
  assertClose(b.download(dx), once.dx.map((v) => 2 * v), { atol: 1e-6, rtol: 1e-6, what: 'dx twice' });
  assertClose(b.download(dw), once.dw.map((v) => 2 * v), { atol: 1e-6, rtol: 1e-6, what: 'dweight twice' });
});

test('rmsnorm op: ranks 3 and 4 give the rows of the 2-D op; a flat (rows) rstd is accepted; in place (out = x) gives the out-of-place result', () => {
  const rng = new Rng(16);
  for (const [shape, C] of [[[2, 5, 33], 33], [[2, 3, 4, 6], 6]] as const) {
    const x = randn(rng, shape), w = weightLike(rng, C), rows = x.size / C;
    const lead = shape.slice(0, -1);
    const out = Tensor.zeros(shape), rstd = Tensor.zeros(lead);
    rmsnormForward(out, rstd, x, w, EPS);
    const out2 = Tensor.zeros([rows, C]), rstd2 = Tensor.zeros([rows]);
    rmsnormForward(out2, rstd2, x.view([rows, C]), w, EPS);
    assert.deepEqual(out.f32, out2.f32, `[${shape}] out`);
    assert.deepEqual(rstd.f32, rstd2.f32, `[${shape}] rstd`);
    const dout = randn(rng, shape);
    const dx = Tensor.zeros(shape), dw = Tensor.zeros([C]), dx2 = Tensor.zeros([rows, C]), dw2 = Tensor.zeros([C]);
    rmsnormBackward(dx, dw, dout, x, w, rstd);
    rmsnormBackward(dx2, dw2, dout.view([rows, C]), x.view([rows, C]), w, rstd2);
    assert.deepEqual(dx.f32, dx2.f32, `[${shape}] dx`);
    assert.deepEqual(dw.f32, dw2.f32, `[${shape}] dweight`);
    const flat = Tensor.zeros([rows]);
    rmsnormForward(Tensor.zeros(shape), flat, x, w, EPS);
    assert.deepEqual(flat.f32, rstd2.f32, `[${shape}] flat rstd`);
  }
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
