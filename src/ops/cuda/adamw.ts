// The fused AdamW step on CUDA over device arrays: the typed wrapper of
// native/cuda/kernels/adamw.cu. param, grad, m and v are equally long f32 ranges, e.g. one
// parameter group's slice of a flat parameter arena and the matching slices of its gradient
// and moment arenas; one launch updates the whole range. Same math as src/ops/adamw.ts and its
// twin adamwStepRef (src/ops/ref/adamw.ts): the per-step scalars are computed here in f64 and
// rounded to f32 once.
//
// The scalars travel through device memory (ADAMW_SCALARS f32 values the caller allocates once
// per parameter group): writeAdamWScalars uploads a step's values and adamwLaunchCuda only
// queues the kernel, so a step captured in a CUDA graph picks up each replay's learning rate.
import {
  cudaKernel,
  expectDisjoint,
  expectDeviceDtype,
  expectDeviceLength,
  gridFor,
  launchKernel,
  uploadDevice,
  type DeviceArray,
} from '../../engine/cuda.js';
import { checkAdamWHyper, type AdamWHyper } from '../adamw.js';

const BLOCK = 256;
/** Length of the f32 device array holding one group's per-step scalars (see adamw.cu). */
export const ADAMW_SCALARS = 8;
const STEP = cudaKernel('adamw.cu', 'eqat_adamw_step', ['ptr', 'ptr', 'ptr', 'ptr', 'i64', 'ptr']);

/** Writes the step's scalars (validated) into `scalars` (f32, ADAMW_SCALARS long). */
export function writeAdamWScalars(scalars: DeviceArray, h: AdamWHyper): void {
  const op = 'writeAdamWScalars';
  expectDeviceDtype(scalars, 'f32', `${op}: argument 'scalars'`);
  expectDeviceLength(scalars, ADAMW_SCALARS, `${op}: argument 'scalars'`);
  checkAdamWHyper('adamwStepCuda', h);
  const w1 = Math.fround(1 - h.beta1);
  const values = new Float32Array([
    1 - h.lr * h.weightDecay,
    w1,
    Math.abs(w1) < 0.5 ? 1 : 0,
    h.beta2,
    1 - h.beta2,
    Math.sqrt(1 - h.beta2 ** h.step),
    h.eps,
    -(h.lr / (1 - h.beta1 ** h.step)),
  ]);
  uploadDevice(scalars, values);
}

function checkAdamWArgs(param: DeviceArray, grad: DeviceArray, m: DeviceArray, v: DeviceArray, scalars: DeviceArray): void {
  const op = 'adamwStepCuda';
  const named: [string, DeviceArray][] = [['param', param], ['grad', grad], ['m', m], ['v', v]];
  for (const [name, a] of named) {
    expectDeviceDtype(a, 'f32', `${op}: argument '${name}'`);
    expectDeviceLength(a, param.length, `${op}: argument '${name}'`, '(as param)');
  }
  expectDisjoint(op, named);
  expectDeviceDtype(scalars, 'f32', `${op}: argument 'scalars'`);
  expectDeviceLength(scalars, ADAMW_SCALARS, `${op}: argument 'scalars'`);
}

/** Queues one AdamW step in place on param, m and v with the scalars last written to `scalars`. */
export function adamwLaunchCuda(param: DeviceArray, grad: DeviceArray, m: DeviceArray, v: DeviceArray, scalars: DeviceArray): void {
  checkAdamWArgs(param, grad, m, v, scalars);
  const n = param.length;
  if (n === 0) return;
  launchKernel(STEP, gridFor(n, BLOCK), BLOCK, [param, grad, m, v, n, scalars]);
}

/** One AdamW step in place on param, m and v (m and v start at zero before step 1). */
export function adamwStepCuda(param: DeviceArray, grad: DeviceArray, m: DeviceArray, v: DeviceArray, h: AdamWHyper, scalars: DeviceArray): void {
  checkAdamWArgs(param, grad, m, v, scalars);
  writeAdamWScalars(scalars, h);
  adamwLaunchCuda(param, grad, m, v, scalars);
}
