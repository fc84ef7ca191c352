// The fused AdamW step on CUDA over device arrays: the typed wrapper of
// native/cuda/kernels/adamw.cu. param, grad, m and v are equally long f32 ranges, e.g. one
// parameter group's slice of a flat parameter arena and the matching slices of its gradient
// and moment arenas; one launch updates the whole range. Same math as src/ops/adamw.ts and its
// twin adamwStepRef (src/ops/ref/adamw.ts): the per-step scalars are computed here in f64 and
// rounded to f32 once.
import { cudaKernel, deviceOverlaps, expectDeviceDtype, expectDeviceLength, gridFor, launchKernel, type DeviceArray } from '../../engine/cuda.js';
import { checkAdamWHyper, type AdamWHyper } from '../adamw.js';

const BLOCK = 256;
const STEP = cudaKernel('adamw.cu', 'eqat_adamw_step', [
  'ptr', 'ptr', 'ptr', 'ptr', 'i64', 'f32', 'f32', 'i32', 'f32', 'f32', 'f32', 'f32', 'f32',
]);

/** One AdamW step in place on param, m and v (m and v start at zero before step 1). */
export function adamwStepCuda(param: DeviceArray, grad: DeviceArray, m: DeviceArray, v: DeviceArray, h: AdamWHyper): void {
  const op = 'adamwStepCuda';
  const named: [string, DeviceArray][] = [['param', param], ['grad', grad], ['m', m], ['v', v]];
  for (const [name, a] of named) {
    expectDeviceDtype(a, 'f32', `${op}: argument '${name}'`);
    expectDeviceLength(a, param.length, `${op}: argument '${name}'`, '(as param)');
  }
  for (let i = 0; i < 4; i++) {
    for (let j = i + 1; j < 4; j++) {
      if (deviceOverlaps(named[i]![1], named[j]![1])) {
        throw new RangeError(`${op}: arguments '${named[i]![0]}' and '${named[j]![0]}' share storage`);
      }
    }
  }
  checkAdamWHyper(op, h);
  const n = param.length;
  if (n === 0) return;
  const f = Math.fround;
  const w1 = f(1 - h.beta1);
  launchKernel(STEP, gridFor(n, BLOCK), BLOCK, [
    param,
    grad,
    m,
    v,
    n,
    f(1 - h.lr * h.weightDecay),
    w1,
    Math.abs(w1) < 0.5 ? 1 : 0,
    f(h.beta2),
    f(1 - h.beta2),
    f(Math.sqrt(1 - h.beta2 ** h.step)),
    f(h.eps),
    f(-(h.lr / (1 - h.beta1 ** h.step))),
  ]);
}
