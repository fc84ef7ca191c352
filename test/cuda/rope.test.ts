// RoPE on CUDA (src/ops/cuda/rope.ts) against the CPU twins (src/ops/ref/rope.ts) on every
// backend of backends.ts (GPU when present, the CPU emulator of the kernel sources): forward,
// in place and the accumulating backward, bit for bit (both round each product and sum to f32
// in the same order), with default, linear and llama3 tables from ropeTables, on odd shapes;
// and the wrapper's argument errors.
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { downloadDevice } from '../../src/engine/cuda.js';
import type { RopeScaling } from '../../src/model/config.js';
import { ropeTables } from '../../src/model/rope.js';
import { ropeBackwardRef, ropeForwardRef } from '../../src/ops/ref/rope.js';
import { ropeBackwardCuda, ropeForwardCuda } from '../../src/ops/cuda/rope.js';
import { randn } from '../util.js';
import { assertBitExact, testOnBackends, type Scope } from './backends.js';

const SCALINGS: RopeScaling[] = [
  { type: 'default' },
  { type: 'linear', factor: 4 },
  { type: 'llama3', factor: 8, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 64 },
];

function compare(s: Scope, rng: Rng, B: number, T: number, H: number, D: number, scaling: RopeScaling, start: number): void {
  const what = `B=${B} T=${T} H=${H} D=${D} ${scaling.type} start=${start}`;
  const { cos, sin } = ropeTables({ headDim: D, ropeTheta: 10000, ropeScaling: scaling }, start, T);
  const x = randn(rng, [B, T, H, D]);
  const want = Tensor.zeros(x.shape);
  ropeForwardRef(want, x, cos, sin);
  const dx = s.upload(x.f32), dcos = s.upload(cos.f32), dsin = s.upload(sin.f32), dout = s.alloc('f32', x.size);
  ropeForwardCuda(dout, dx, dcos, dsin, B, T, H, D);
  assertBitExact(downloadDevice<Float32Array>(dout), want.f32, `${what} out`);
  ropeForwardCuda(dx, dx, dcos, dsin, B, T, H, D);
  assertBitExact(downloadDevice<Float32Array>(dx), want.f32, `${what} in place`);

  const g = randn(rng, x.shape), grad0 = randn(rng, x.shape);
  const gradWant = grad0.clone();
  ropeBackwardRef(gradWant, g, cos, sin);
  const dgrad = s.upload(grad0.f32), dg = s.upload(g.f32);
  ropeBackwardCuda(dgrad, dg, dcos, dsin, B, T, H, D);
  assertBitExact(downloadDevice<Float32Array>(dgrad), gradWant.f32, `${what} dx (accumulated)`);
}

testOnBackends('rope forward, in place and accumulating backward match the twins bit for bit', (s) => {
  const rng = new Rng(41);
  let k = 0;
  for (const D of [2, 6, 32, 64]) {
    for (const [B, T, H] of [[1, 1, 1], [2, 7, 3], [1, 17, 2]] as const) compare(s, rng, B, T, H, D, SCALINGS[k++ % 3]!, k % 5);
  }
  for (const scaling of SCALINGS) compare(s, rng, 2, 33, 3, 128, scaling, 100);
  for (const D of [34, 46, 130]) compare(s, rng, 1, 7, 2, D, SCALINGS[D % 3]!, 3);
  compare(s, rng, 3, 65, 4, 64, SCALINGS[2]!, 0);
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
