// CUDA ops (src/ops/cuda/*) that have no Backend counterpart yet, against the TypeScript twins
// the CPU tests use, on random and odd shapes, on every backend of backends.ts: the GPU
// (skipped without one) and the CPU emulator of the kernel sources. Fake quantization and
// AdamW are computed operation for operation like their twins and must match bit for bit; the
// sum of squares and the MSE forward sum in f64 in another order. (The ops of the Backend
// interface are specified once for every backend in test/ops/<op>.test.ts.)
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { f32ToBf16Ref } from '../../src/engine/dtype.js';
import { downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { adamwStepRef } from '../../src/ops/ref/adamw.js';
import { fakeQuantBackwardRef, fakeQuantForwardRef, minMaxInit, qmax } from '../../src/quant/primitives.js';
import { fakeQuantBackwardAdamwCuda, fakeQuantBackwardCuda, fakeQuantForwardCuda } from '../../src/quant/cuda/fakequant.js';
import { ADAMW_SCALARS, writeAdamWScalars } from '../../src/ops/cuda/adamw.js';
import { randn } from '../util.js';
import { assertBitExact, testOnBackends } from './backends.js';

const host = (a: DeviceArray): Float32Array => downloadDevice<Float32Array>(a);

testOnBackends('fake quant forward and STE backward match the twins bit for bit', (s) => {
  const rng = new Rng(3);
  const layouts: [number, number, number][] = [
    [1, 64, 64],
    [3, 96, 32],
    [17, 130, 65],
    [3, 51, 17],
    [7, 7, 1],
    [17, 40, 20],
    [37, 256, 128], // 74 groups: three tiles of the backward, two chunks of each group
  ];
  for (const bits of [2, 3, 4, 8]) {
    for (const [O, I, G] of layouts) {
      const what = `bits=${bits} O=${O} I=${I} G=${G}`;
      const { w, scale, zero } = fakeQuantCase(rng, O, I, G, bits);
      const out = Tensor.zeros([O, I]);
      fakeQuantForwardRef(out, w, scale, zero, bits, G);
      const dw = s.upload(w.f32), ds = s.upload(scale.f32), dz = s.upload(zero.f32), dout = s.alloc('f32', O * I);
      fakeQuantForwardCuda(dout, dw, ds, dz, O, I, bits, G);
      assertBitExact(host(dout), out.f32, `forward ${what}`);
      // straight to bf16: the twin's values rounded to bf16
      const dout16 = s.alloc('bf16', O * I);
      fakeQuantForwardCuda(dout16, dw, ds, dz, O, I, bits, G);
      assertBitExact(downloadDevice<Uint16Array>(dout16), Uint16Array.from(out.f32, (x) => f32ToBf16Ref(x)), `forward to bf16 ${what}`);

      const g = randn(rng, [O, I]);
      const gw = randn(rng, [O, I]), gs = randn(rng, [O, I / G]), gz = randn(rng, [O, I / G]);
      for (let i = 0; i < gw.size; i += 5) gw.f32[i] = -0; // clipped elements turn -0 into +0
      const dgw = s.upload(gw.f32), dgs = s.upload(gs.f32), dgz = s.upload(gz.f32), dg = s.upload(g.f32);
      fakeQuantBackwardRef(gw, gs, gz, g, w, scale, zero, bits, G);
      fakeQuantBackwardCuda(dgw, dgs, dgz, dg, dw, ds, dz, O, I, bits, G);
      assertBitExact(host(dgw), gw.f32, `backward dw ${what}`);
      assertBitExact(host(dgs), gs.f32, `backward dscale ${what}`);
      assertBitExact(host(dgz), gz.f32, `backward dzero ${what}`);
    }
  }
});

testOnBackends('fake quant backward with the weight AdamW step fused in equals the twins: STE into a zeroed gradient, then AdamW', (s) => {
  const rng = new Rng(13);
  const h = { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.1 };
  for (const [O, I, G, bits] of [[3, 96, 32, 2], [17, 130, 65, 3], [37, 256, 128, 4], [7, 7, 1, 2]] as [number, number, number, number][]) {
    const what = `bits=${bits} O=${O} I=${I} G=${G}`;
    const { w, scale, zero } = fakeQuantCase(rng, O, I, G, bits);
    const ref = { w: w.clone(), m: randn(rng, [O, I], 0.01), v: Tensor.zeros([O, I]) };
    for (let i = 0; i < ref.v.size; i++) ref.v.f32[i] = rng.next() * 1e-4;
    const dw = s.upload(ref.w.f32), dm = s.upload(ref.m.f32), dv = s.upload(ref.v.f32);
    const ds = s.upload(scale.f32), dz = s.upload(zero.f32), scalars = s.alloc('f32', ADAMW_SCALARS);
    const gs = randn(rng, [O, I / G]), gz = randn(rng, [O, I / G]);
    const dgs = s.upload(gs.f32), dgz = s.upload(gz.f32);
    const dgsNull = s.upload(gs.f32), dgzNull = s.upload(gz.f32);
    for (let step = 1; step <= 2; step++) {
      const g = randn(rng, [O, I]);
      for (let i = 0; i < g.size; i += 7) g.f32[i] = -0; // an in-range -0 reaches AdamW as +0
      const dg = s.upload(g.f32);
      // without a weight gradient buffer (weights not trained): only the step-size and zero-point sums
      fakeQuantBackwardCuda(null, dgsNull, dgzNull, dg, s.upload(host(dw).slice()), ds, dz, O, I, bits, G);
      // twins: the STE into a zeroed buffer, then AdamW over it
      const grad = Tensor.zeros([O, I]);
      fakeQuantBackwardRef(grad, gs, gz, g, ref.w, scale, zero, bits, G);
      adamwStepRef(ref.w, grad, ref.m, ref.v, { ...h, step });
      writeAdamWScalars(scalars, { ...h, step });
      fakeQuantBackwardAdamwCuda(dw, dm, dv, scalars, dgs, dgz, dg, ds, dz, O, I, bits, G);
    }
    assertBitExact(host(dw), ref.w.f32, `weight ${what}`);
    assertBitExact(host(dm), ref.m.f32, `m ${what}`);
    assertBitExact(host(dv), ref.v.f32, `v ${what}`);
    assertBitExact(host(dgs), gs.f32, `dscale ${what}`);
    assertBitExact(host(dgz), gz.f32, `dzero ${what}`);
    assertBitExact(host(dgsNull), gs.f32, `dscale without dw ${what}`);
    assertBitExact(host(dgzNull), gz.f32, `dzero without dw ${what}`);
  }
});

/**
 * A weight (O, I) with scale/zero exercising every branch: min-max init, scales shrunk so
 * codes clip, scales below 1e-4 and above 1e4, zeros off the integers and outside [0, qmax],
 * and groups of exact ties (scale 0.25, half-integer codes).
 */
function fakeQuantCase(rng: Rng, O: number, I: number, G: number, bits: number): { w: Tensor; scale: Tensor; zero: Tensor } {
  const w = randn(rng, [O, I]);
  const groups = (O * I) / G;
  const qm = qmax(bits);
  const tie = new Array<boolean>(groups).fill(false);
  for (let g = 0; g < groups; g++) {
    if (rng.next() < 0.15) {
      tie[g] = true;
      for (let e = g * G; e < (g + 1) * G; e++) w.f32[e] = (rng.int(-8, 8) + 0.5) * 0.25;
    }
  }
  const init = minMaxInit(w.f32, O, I, bits, G);
  for (let g = 0; g < groups; g++) {
    const r = rng.next();
    if (tie[g]) init.scale[g] = 0.25;
    else if (r < 0.15) init.scale[g]! *= 0.4;
    else if (r < 0.2) init.scale[g] = 1e-6;
    else if (r < 0.25) init.scale[g] = 2e4;
    if (r >= 0.25 && r < 0.35) init.zero[g] = init.zero[g]! + rng.next() - 0.5;
    else if (r >= 0.35 && r < 0.4) init.zero[g] = rng.next() < 0.5 ? -2.5 : qm + 3;
    else if (r >= 0.4 && r < 0.45) init.zero[g] = 2.5; // a zero-point tie
  }
  return { w, scale: Tensor.fromF32(init.scale, [O, I / G]), zero: Tensor.fromF32(init.zero, [O, I / G]) };
}
