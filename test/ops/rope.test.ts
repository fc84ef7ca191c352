// RoPE op: native against the TypeScript twin on odd shapes, in place, accumulation into a
// pre-filled dx, backward against finite differences of an f64 forward, identities of the
// rotation, and argument errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { ropeTables } from '../../src/model/rope.js';
import { ropeBackward, ropeForward } from '../../src/ops/rope.js';
import { ropeBackwardRef, ropeForwardRef } from '../../src/ops/ref/rope.js';
import { assertClose, checkGrad, randn } from '../util.js';

function tables(D: number, start: number, T: number): { cos: Tensor; sin: Tensor } {
  return ropeTables({ headDim: D, ropeTheta: 10000, ropeScaling: { type: 'default' } }, start, T);
}

// Each output is (x1*c) -/+ (x2*s) with separately rounded products, in both implementations.
const TIGHT = { atol: 1e-7, rtol: 1e-6 };

function compare(rng: Rng, B: number, T: number, H: number, D: number): void {
  const what = `B=${B} T=${T} H=${H} D=${D}`;
  const { cos, sin } = tables(D, 3, T);
  const x = randn(rng, [B, T, H, D]);
  const out = Tensor.zeros(x.shape), outRef = Tensor.zeros(x.shape);
  ropeForward(out, x, cos, sin);
  ropeForwardRef(outRef, x, cos, sin);
  assertClose(out.f32, outRef.f32, { ...TIGHT, what: `${what} out` });
  // In place: out is x itself.
  const y = x.clone();
  ropeForward(y, y, cos, sin);
  assertClose(y.f32, outRef.f32, { ...TIGHT, what: `${what} in place` });
  // Backward into a pre-filled dx.
  const dout = randn(rng, x.shape);
  const dx0 = randn(rng, x.shape);
  const dx = dx0.clone(), dxRef = dx0.clone();
  ropeBackward(dx, dout, cos, sin);
  ropeBackwardRef(dxRef, dout, cos, sin);
  assertClose(dx.f32, dxRef.f32, { ...TIGHT, what: `${what} dx` });
}

test('rope: native matches the twin on odd shapes (forward, in place, accumulating backward)', () => {
  const rng = new Rng(21);
  for (const D of [2, 6, 32, 64]) {
    for (const B of [1, 2]) {
      for (const T of [1, 3, 17]) {
        for (const H of [1, 3]) compare(rng, B, T, H, D);
      }
    }
  }
  // Head dims whose half is not a multiple of the vector width, and one wider than 32 lanes.
  for (const D of [34, 46, 130]) compare(rng, 1, 7, 2, D);
});

test('rope: sizes that split across threads match the twin', () => {
  const rng = new Rng(22);
  compare(rng, 2, 65, 4, 64);
  compare(rng, 3, 129, 2, 128);
});

test('rope: position 0 is the identity and the rotation preserves each pair norm', () => {
  const rng = new Rng(23);
  const D = 32, half = D / 2;
  const { cos, sin } = tables(D, 0, 17);
  const x = randn(rng, [1, 17, 3, D]);
  const out = Tensor.zeros(x.shape);
  ropeForward(out, x, cos, sin);
  assert.deepEqual(out.f32.subarray(0, 3 * D), x.f32.subarray(0, 3 * D), 'position 0 must be unchanged');
  for (let r = 0; r < 17 * 3; r++) {
    for (let i = 0; i < half; i++) {
      const a = x.f32[r * D + i]!, b = x.f32[r * D + i + half]!;
      const p = out.f32[r * D + i]!, q = out.f32[r * D + i + half]!;
      const before = Math.hypot(a, b), after = Math.hypot(p, q);
      assert.ok(Math.abs(after - before) <= 1e-6 * (1 + before), `row ${r} pair ${i}: |pair| ${before} -> ${after}`);
    }
  }
});

test('rope: the halves are rotated as rotate_half pairs (i, i + D/2), not neighbours', () => {
  // One head, D = 4, position with angles a0 (pair 0,2) and a1 (pair 1,3).
  const cos = Tensor.fromF32(new Float32Array([0, 1]), [1, 2]); // pair 0 rotated by 90 degrees, pair 1 not at all
  const sin = Tensor.fromF32(new Float32Array([1, 0]), [1, 2]);
  const x = Tensor.fromF32(new Float32Array([1, 2, 3, 4]), [1, 1, 1, 4]);
  const out = Tensor.zeros([1, 1, 1, 4]);
  ropeForward(out, x, cos, sin);
  // out[0] = x0*c - x2*s = -3, out[2] = x2*c + x0*s = 1; pair (1, 3) unchanged.
  assert.deepEqual([...out.f32], [-3, 2, 1, 4]);
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
