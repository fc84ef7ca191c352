// The Block-AP reconstruction loss on CUDA: mean squared error over device arrays and its
// accumulating backward (native/cuda/kernels/loss.cu). Twins: mseForwardRef / mseBackwardRef
// (src/ops/ref/reduce.ts); the CPU op is src/ops/reduce.ts mseForward / mseBackward.
//
// The forward needs a small device buffer for per-block partial sums, allocated once by the
// caller (allocMsePartials) and reused every step; it returns the loss as a JS number, which is
// the step's one device-to-host transfer.
import {
  allocDevice,
  cudaKernel,
  downloadDevice,
  expectDeviceDtype,
  expectDeviceLength,
  gridFor,
  launchKernel,
  type DeviceArray,
} from '../../engine/cuda.js';

const BLOCK = 256;
/** Blocks of the forward: enough to fill a GPU, few enough that the host sum is trivial. */
const MAX_BLOCKS = 512;
const PARTIAL = cudaKernel('loss.cu', 'eqat_mse_partial', ['ptr', 'ptr', 'ptr', 'i64']);
const BACKWARD = cudaKernel('loss.cu', 'eqat_mse_backward', ['ptr', 'ptr', 'ptr', 'f32', 'i64']);

/** Device scratch for mseForwardCuda: MAX_BLOCKS f64 partial sums (as bytes). */
export function allocMsePartials(): DeviceArray {
  return allocDevice('u8', MAX_BLOCKS * 8);
}

function checkPair(op: string, a: DeviceArray, b: DeviceArray): void {
  expectDeviceDtype(a, 'f32', `${op}: a`);
  expectDeviceDtype(b, 'f32', `${op}: b`);
  expectDeviceLength(b, a.length, `${op}: b`);
}

/** Mean over all elements of (a - b)^2 (f64 sums); NaN for empty arrays, as the CPU op. */
export function mseForwardCuda(a: DeviceArray, b: DeviceArray, partials: DeviceArray): number {
  const op = 'mseForwardCuda';
  checkPair(op, a, b);
  expectDeviceDtype(partials, 'u8', `${op}: partials`);
  expectDeviceLength(partials, MAX_BLOCKS * 8, `${op}: partials`, '(allocMsePartials)');
  if (a.length === 0) return NaN;
  const blocks = Math.min(gridFor(a.length, BLOCK), MAX_BLOCKS);
  launchKernel(PARTIAL, blocks, BLOCK, [partials, a, b, a.length]);
  const bytes = downloadDevice(partials, new Uint8Array(blocks * 8));
  const sums = new Float64Array(bytes.buffer, 0, blocks);
  let total = 0;
  for (let i = 0; i < blocks; i++) total += sums[i]!;
  return total / a.length;
}

/** da += scale * 2 * (a - b) / numel, the factor rounded to f32 once (as the CPU op). */
export function mseBackwardCuda(da: DeviceArray, a: DeviceArray, b: DeviceArray, scale = 1): void {
  const op = 'mseBackwardCuda';
  checkPair(op, a, b);
  expectDeviceDtype(da, 'f32', `${op}: da`);
  expectDeviceLength(da, a.length, `${op}: da`);
  if (typeof scale !== 'number') throw new TypeError(`${op}: argument 'scale' must be a number, got ${typeof scale}`);
  if (a.length === 0) return;
  launchKernel(BACKWARD, gridFor(a.length, BLOCK), BLOCK, [da, a, b, Math.fround((scale * 2) / a.length), a.length]);
}
