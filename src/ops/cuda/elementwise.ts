// Elementwise CUDA ops on device arrays: scaling, and f32 <-> bf16 conversion (bf16 compute
// copies of f32 master weights). Kernels: native/cuda/kernels/elementwise.cu. Twins: scaleRef
// (src/ops/ref/elementwise.ts), f32ToBf16Ref / bf16ToF32Ref (src/engine/dtype.ts).
import {
  cudaKernel,
  expectDeviceDtype,
  expectDeviceLength,
  gridFor,
  launchKernel,
  type DeviceArray,
} from '../../engine/cuda.js';

const BLOCK = 256;
const SCALE = cudaKernel('elementwise.cu', 'eqat_scale', ['ptr', 'ptr', 'f32', 'i64']);
const TO_BF16 = cudaKernel('elementwise.cu', 'eqat_f32_to_bf16', ['ptr', 'ptr', 'i64']);
const FROM_BF16 = cudaKernel('elementwise.cu', 'eqat_bf16_to_f32', ['ptr', 'ptr', 'i64']);

/** out = alpha * x (f32, same length; out may be x). */
export function scaleCuda(out: DeviceArray, x: DeviceArray, alpha: number): void {
  const op = 'scaleCuda';
  expectDeviceDtype(out, 'f32', `${op}: out`);
  expectDeviceDtype(x, 'f32', `${op}: x`);
  expectDeviceLength(out, x.length, `${op}: out`);
  if (typeof alpha !== 'number') throw new TypeError(`${op}: argument 'alpha' must be a number`);
  if (x.length === 0) return;
  launchKernel(SCALE, gridFor(x.length, BLOCK), BLOCK, [out, x, alpha, x.length]);
}

/** out (bf16) = x (f32) rounded to nearest even. */
export function f32ToBf16Cuda(out: DeviceArray, x: DeviceArray): void {
  const op = 'f32ToBf16Cuda';
  expectDeviceDtype(out, 'bf16', `${op}: out`);
  expectDeviceDtype(x, 'f32', `${op}: x`);
  expectDeviceLength(out, x.length, `${op}: out`);
  if (x.length === 0) return;
  launchKernel(TO_BF16, gridFor(x.length, BLOCK), BLOCK, [out, x, x.length]);
}

/** out (f32) = x (bf16), exactly. */
export function bf16ToF32Cuda(out: DeviceArray, x: DeviceArray): void {
  const op = 'bf16ToF32Cuda';
  expectDeviceDtype(out, 'f32', `${op}: out`);
  expectDeviceDtype(x, 'bf16', `${op}: x`);
  expectDeviceLength(out, x.length, `${op}: out`);
  if (x.length === 0) return;
  launchKernel(FROM_BF16, gridFor(x.length, BLOCK), BLOCK, [out, x, x.length]);
}
