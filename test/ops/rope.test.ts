// RoPE, one spec on every backend (test/ops/spec.ts): forward, in place and the accumulating
// backward against the TypeScript twin on odd shapes and threaded sizes, with default, linear
// and llama3 tables from ropeTables at several start positions; identities of the rotation;
// backward against finite differences of an f64 forward; and the argument errors of the CPU
// op and of the CUDA wrapper.
//
// Error bounds: each output is (x1*c) -/+ (x2*s) with separately rounded products. The CPU
// kernel matches the twin to TIGHT; the CUDA kernel rounds each product and sum to f32 in the
// twin's order and matches it bit for bit.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import type { RopeScaling } from '../../src/model/config.js';
import { ropeTables } from '../../src/model/rope.js';
import { ropeBackward, ropeForward } from '../../src/ops/rope.js';
import { ropeBackwardRef, ropeForwardRef } from '../../src/ops/ref/rope.js';
import { ropeBackwardCuda, ropeForwardCuda } from '../../src/ops/cuda/rope.js';
import { assertClose, checkGrad, randn } from '../util.js';
import { assertBitExact, testOnBackends } from '../cuda/backends.js';
import { forEachBackend, type OnBackend } from './spec.js';

const DEFAULT: RopeScaling = { type: 'default' };
const SCALINGS: RopeScaling[] = [
  DEFAULT,
  { type: 'linear', factor: 4 },
  { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
];

function tables(D: number, start: number, T: number, scaling = DEFAULT): { cos: Tensor; sin: Tensor } {
  return ropeTables({ headDim: D, ropeTheta: 10000, ropeScaling: scaling }, start, T);
}

// The CPU kernel against the twin; CUDA is bit for bit.
const TIGHT = { atol: 1e-7, rtol: 1e-6 };

function assertMatches(b: OnBackend, got: Float32Array, want: Float32Array, what: string): void {
  if (b.name === 'cpu') assertClose(got, want, { ...TIGHT, what });
  else assertBitExact(got, want, what);
}

/** Forward, in place (out is x) and backward into a pre-filled dx, against the twin. */
function compare(b: OnBackend, rng: Rng, B: number, T: number, H: number, D: number, scaling = DEFAULT, start = 3): void {
  const what = `B=${B} T=${T} H=${H} D=${D} ${scaling.type} start=${start}`;
  const { cos, sin } = tables(D, start, T, scaling);
  const x = randn(rng, [B, T, H, D]);
  const want = Tensor.zeros(x.shape);
  ropeForwardRef(want, x, cos, sin);
  const gx = b.upload(x.f32), gcos = b.upload(cos.f32), gsin = b.upload(sin.f32), gout = b.alloc('f32', x.size);
  b.be.ropeForward(gout, gx, gcos, gsin, B, T, H, D);
  assertMatches(b, b.download(gout), want.f32, `${what} out`);
  b.be.ropeForward(gx, gx, gcos, gsin, B, T, H, D);
  assertMatches(b, b.download(gx), want.f32, `${what} in place`);

  const dout = randn(rng, x.shape), dx0 = randn(rng, x.shape);
  const dxWant = dx0.clone();
  ropeBackwardRef(dxWant, dout, cos, sin);
  const gdx = b.upload(dx0.f32);
  b.be.ropeBackward(gdx, b.upload(dout.f32), gcos, gsin, B, T, H, D);
  assertMatches(b, b.download(gdx), dxWant.f32, `${what} dx (accumulated)`);
}

forEachBackend('rope: matches the twin on odd shapes (forward, in place, accumulating backward)', (b) => {
  const rng = new Rng(21);
  for (const D of [2, 6, 32, 64]) {
    for (const B of [1, 2]) {
      for (const T of [1, 3, 17]) {
        for (const H of [1, 3]) compare(b, rng, B, T, H, D);
      }
    }
  }
  // Head dims whose half is not a multiple of the vector width, and one wider than 32 lanes.
  for (const D of [34, 46, 130]) compare(b, rng, 1, 7, 2, D);
});

forEachBackend('rope: sizes that split across threads match the twin', (b) => {
  const rng = new Rng(22);
  compare(b, rng, 2, 65, 4, 64);
  compare(b, rng, 3, 129, 2, 128);
});

forEachBackend('rope: default, linear and llama3 tables at several start positions match the twin', (b) => {
  const rng = new Rng(41);
  let k = 0;
  for (const D of [2, 6, 32, 64]) {
    for (const [B, T, H] of [[1, 1, 1], [2, 7, 3], [1, 17, 2]] as const) compare(b, rng, B, T, H, D, SCALINGS[k++ % 3]!, k % 5);
  }
  for (const scaling of SCALINGS) compare(b, rng, 2, 33, 3, 128, scaling, 100);
  for (const D of [34, 46, 130]) compare(b, rng, 1, 7, 2, D, SCALINGS[D % 3]!, 3);
  compare(b, rng, 3, 65, 4, 64, SCALINGS[2]!, 0);
});

forEachBackend('rope: position 0 is the identity and the rotation preserves each pair norm', (b) => {
  const rng = new Rng(23);
  const D = 32, half = D / 2;
  const { cos, sin } = tables(D, 0, 17);
  const x = randn(rng, [1, 17, 3, D]);
  const gout = b.alloc('f32', x.size);
  b.be.ropeForward(gout, b.upload(x.f32), b.upload(cos.f32), b.upload(sin.f32), 1, 17, 3, D);
  const out = b.download(gout);
  assert.deepEqual(out.subarray(0, 3 * D), x.f32.subarray(0, 3 * D), 'position 0 must be unchanged');
  for (let r = 0; r < 17 * 3; r++) {
    for (let i = 0; i < half; i++) {
      const a = x.f32[r * D + i]!, c = x.f32[r * D + i + half]!;
      const p = out[r * D + i]!, q = out[r * D + i + half]!;
      const before = Math.hypot(a, c), after = Math.hypot(p, q);
      assert.ok(Math.abs(after - before) <= 1e-6 * (1 + before), `row ${r} pair ${i}: |pair| ${before} -> ${after}`);
    }
  }
});

forEachBackend('rope: the halves are rotated as rotate_half pairs (i, i + D/2), not neighbours', (b) => {
  // One head, D = 4, position with angles a0 (pair 0,2) and a1 (pair 1,3).
  const cos = b.upload(new Float32Array([0, 1])); // pair 0 rotated by 90 degrees, pair 1 not at all
  const sin = b.upload(new Float32Array([1, 0]));
  const out = b.alloc('f32', 4);
  b.be.ropeForward(out, b.upload(new Float32Array([1, 2, 3, 4])), cos, sin, 1, 1, 1, 4);
  // out[0] = x0*c - x2*s = -3, out[2] = x2*c + x0*s = 1; pair (1, 3) unchanged.
  assert.deepEqual([...b.download(out)], [-3, 2, 1, 4]);
});

/** sum(R * rope(x)) in f64 from the same tables, independent of the kernels. */
function lossF64(x: Float32Array, R: Float32Array, cos: Float32Array, sin: Float32Array, dims: number[]): number {
  const [B, T, H, D] = dims as [number, number, number, number];
  const half = D / 2;
  let loss = 0;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const base = ((b * T + t) * H + h) * D;
        for (let i = 0; i < half; i++) {
          const c = cos[t * half + i]!, s = sin[t * half + i]!;
          const x1 = x[base + i]!, x2 = x[base + i + half]!;
          loss += R[base + i]! * (x1 * c - x2 * s) + R[base + i + half]! * (x2 * c + x1 * s);
        }
      }
    }
  }
  return loss;
}

test('rope: backward matches finite differences (native and twin)', () => {
  const rng = new Rng(24);
  for (const dims of [[1, 3, 2, 6], [2, 5, 3, 32]]) {
    const [, T, , D] = dims as [number, number, number, number];
    const { cos, sin } = tables(D, 7, T);
    const x = randn(rng, dims);
    const R = randn(rng, dims);
    const f = (): number => lossF64(x.f32, R.f32, cos.f32, sin.f32, dims);
    for (const [bwd, name] of [[ropeBackward, 'native'], [ropeBackwardRef, 'twin']] as const) {
      const dx = Tensor.zeros(dims);
      bwd(dx, R, cos, sin);
      // The loss is linear in x, so central differences are exact up to f64 rounding.
      checkGrad(f, x.f32, dx.f32, { eps: 2 ** -10, atol: 1e-6, rtol: 1e-5, samples: 40, what: `${name} dx ${dims}` });
    }
  }
});

test('rope: shape and dtype errors name the op and argument', () => {
  const { cos, sin } = tables(8, 0, 3);
  const x = Tensor.zeros([2, 3, 2, 8]);
  const bad: Array<[() => void, RegExp, ErrorConstructor]> = [
    [() => ropeForward(Tensor.zeros([2, 3, 2, 8]), Tensor.zeros([6, 2, 8]), cos, sin), /ropeForward: x/, RangeError],
    [() => ropeForward(Tensor.zeros([2, 3, 2, 7]), Tensor.zeros([2, 3, 2, 7]), cos, sin), /ropeForward: x.*even/, RangeError],
    [() => ropeForward(Tensor.zeros([2, 3, 1, 8]), x, cos, sin), /ropeForward: out/, RangeError],
    [() => ropeForward(x, x, tables(8, 0, 4).cos, sin), /ropeForward: cos/, RangeError],
    [() => ropeForward(x, x, cos, tables(10, 0, 3).sin), /ropeForward: sin/, RangeError],
    [() => ropeForward(x, x, Tensor.zeros([3, 4], 'i32'), sin), /ropeForward: cos/, TypeError],
    [() => ropeBackward(Tensor.zeros([2, 3, 2, 6]), x, cos, sin), /ropeBackward: dx/, RangeError],
    [() => ropeBackward(x, x, cos, sin), /ropeBackward: dx and dout/, RangeError],
    [() => ropeBackwardRef(x, Tensor.zeros([2, 3, 2, 8]), cos, Tensor.zeros([3, 3])), /ropeBackwardRef: sin/, RangeError],
  ];
  for (const [fn, message, type] of bad) assert.throws(fn, (e: unknown) => e instanceof type && message.test((e as Error).message));
});

testOnBackends('rope wrapper: argument errors name the op and argument', (s) => {
  const x = s.alloc('f32', 2 * 3 * 2 * 8), t = s.alloc('f32', 3 * 4), o = s.alloc('f32', 2 * 3 * 2 * 8);
  assert.throws(() => ropeForwardCuda(o, x, t, t, 2, 3, 2, 7), /ropeForwardCuda: head dim D must be even/);
  assert.throws(() => ropeForwardCuda(o, x, t, t, 2, 3, 2, 6), /ropeForwardCuda: out: expected 72 elements/);
  assert.throws(() => ropeForwardCuda(o, x, s.alloc('f32', 5), t, 2, 3, 2, 8), /ropeForwardCuda: cos: expected 12 elements \(T=3, D\/2=4\)/);
  assert.throws(() => ropeForwardCuda(o, s.alloc('i32', 96), t, t, 2, 3, 2, 8), /ropeForwardCuda: x: expected a f32 device array, got i32/);
  assert.throws(() => ropeBackwardCuda(x, x, t, t, 2, 3, 2, 8), /ropeBackwardCuda: dx and dout must not share memory/);
  assert.throws(() => ropeForwardCuda(o, x, t, t, 0, 3, 2, 8), /ropeForwardCuda: B must be an integer/);
});
