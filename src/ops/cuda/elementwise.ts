// Elementwise CUDA ops on device arrays: scaling, sums, copies, bias add and its backward, and
// f32 <-> bf16 conversion (bf16 compute copies of f32 master weights). Kernels:
// native/cuda/kernels/elementwise.cu. Twins: scaleRef, addRef, copyRef, addBiasRef,
// biasBackwardRef (src/ops/ref/elementwise.ts), f32ToBf16Ref / bf16ToF32Ref (src/engine/dtype.ts).
import {
  cudaKernel,
  deviceOverlaps,
  expectDeviceDtype,
  expectDeviceLength,
  gridFor,
  launchKernel,
  type DeviceArray,
} from '../../engine/cuda.js';

const BLOCK = 256;
const SCALE = cudaKernel('elementwise.cu', 'eqat_scale', ['ptr', 'ptr', 'f32', 'i64']);
const ADD = cudaKernel('elementwise.cu', 'eqat_add', ['ptr', 'ptr', 'ptr', 'i64']);
const COPY = cudaKernel('elementwise.cu', 'eqat_copy', ['ptr', 'ptr', 'i64']);
const ADD_BIAS = cudaKernel('elementwise.cu', 'eqat_add_bias', ['ptr', 'ptr', 'i64', 'i32']);
const BIAS_BACKWARD = cudaKernel('elementwise.cu', 'eqat_bias_backward', ['ptr', 'ptr', 'i64', 'i32']);
const TO_BF16 = cudaKernel('elementwise.cu', 'eqat_f32_to_bf16', ['ptr', 'ptr', 'i64']);
const TO_BF16_X4 = cudaKernel('elementwise.cu', 'eqat_f32_to_bf16_x4', ['ptr', 'ptr', 'i64']); // 16-byte aligned x, 8-byte aligned out
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

/** out = a + b (f32, same length; out may be a or b). */
export function addCuda(out: DeviceArray, a: DeviceArray, b: DeviceArray): void {
  const op = 'addCuda';
  for (const [name, t] of [['out', out], ['a', a], ['b', b]] as const) expectDeviceDtype(t, 'f32', `${op}: ${name}`);
  expectDeviceLength(b, a.length, `${op}: b`);
  expectDeviceLength(out, a.length, `${op}: out`);
  if (a.length === 0) return;
  launchKernel(ADD, gridFor(a.length, BLOCK), BLOCK, [out, a, b, a.length]);
}

/** dst = src (f32, same length, no overlap unless identical). */
export function copyCuda(dst: DeviceArray, src: DeviceArray): void {
  const op = 'copyCuda';
  expectDeviceDtype(dst, 'f32', `${op}: dst`);
  expectDeviceDtype(src, 'f32', `${op}: src`);
  expectDeviceLength(dst, src.length, `${op}: dst`);
  if (dst.handle === src.handle || src.length === 0) return;
  if (deviceOverlaps(dst, src)) throw new RangeError(`${op}: dst and src overlap`);
  launchKernel(COPY, gridFor(src.length, BLOCK), BLOCK, [dst, src, src.length]);
}

function checkBias(op: string, rowsArg: string, x: DeviceArray, bias: DeviceArray, cols: number): number {
  expectDeviceDtype(x, 'f32', `${op}: ${rowsArg}`);
  expectDeviceDtype(bias, 'f32', `${op}: bias`);
  if (!Number.isInteger(cols) || cols < 1 || cols > 2 ** 31 - 1) throw new RangeError(`${op}: cols must be an integer in [1, 2^31), got ${cols}`);
  expectDeviceLength(bias, cols, `${op}: bias`, '(cols)');
  if (x.length % cols !== 0) throw new RangeError(`${op}: ${rowsArg} has ${x.length} elements, not a multiple of cols = ${cols}`);
  return x.length / cols;
}

/** out[r, c] += bias[c]   out: (rows, cols)  bias: (cols) */
export function addBiasCuda(out: DeviceArray, bias: DeviceArray, cols: number): void {
  const rows = checkBias('addBiasCuda', 'out', out, bias, cols);
  if (rows === 0) return;
  launchKernel(ADD_BIAS, gridFor(out.length, BLOCK), BLOCK, [out, bias, rows, cols]);
}

/** dbias[c] += sum over rows of dout[r, c]   dout: (rows, cols)  dbias: (cols) */
export function biasBackwardCuda(dbias: DeviceArray, dout: DeviceArray, cols: number): void {
  const rows = checkBias('biasBackwardCuda', 'dout', dout, dbias, cols);
  if (rows === 0) return;
  launchKernel(BIAS_BACKWARD, gridFor(cols, BLOCK), BLOCK, [dbias, dout, rows, cols]);
}

/** out (bf16) = x (f32) rounded to nearest even. */
export function f32ToBf16Cuda(out: DeviceArray, x: DeviceArray): void {
  const op = 'f32ToBf16Cuda';
  expectDeviceDtype(out, 'bf16', `${op}: out`);
  expectDeviceDtype(x, 'f32', `${op}: x`);
  expectDeviceLength(out, x.length, `${op}: out`);
  if (x.length === 0) return;
  if (x.handle % 16n === 0n && out.handle % 8n === 0n) launchKernel(TO_BF16_X4, gridFor(Math.ceil(x.length / 4), BLOCK), BLOCK, [out, x, x.length]);
  else launchKernel(TO_BF16, gridFor(x.length, BLOCK), BLOCK, [out, x, x.length]);
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
