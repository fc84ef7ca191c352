// Whole-array reductions over device arrays: the sum of squares (gradient norms) and the
// Block-AP reconstruction loss, mean squared error, with its accumulating backward
// (native/cuda/kernels/reduce.cu). Twins: sumSquaresRef / mseForwardRef / mseBackwardRef
// (src/ops/ref/reduce.ts); the CPU ops are in src/ops/reduce.ts.
//
// The sums need a small device buffer for per-block partial sums, allocated once by the caller
// (allocReducePartials) and reused; they return a JS number, which is a device-to-host transfer.
// The MSE also comes in two halves, mseQueueCuda (kernels only, fit for a captured CUDA graph)
// and readMseCuda (the transfer and the host sum, after the work has run).
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
const PARTIAL = cudaKernel('reduce.cu', 'eqat_mse_partial', ['ptr', 'ptr', 'ptr', 'i64']);
const BACKWARD = cudaKernel('reduce.cu', 'eqat_mse_backward', ['ptr', 'ptr', 'ptr', 'f32', 'i64']);
const SUMSQ = cudaKernel('reduce.cu', 'eqat_sumsq_partial', ['ptr', 'ptr', 'i64']);

/** Device scratch for the sums (mseForwardCuda, sumSquaresCuda): MAX_BLOCKS f64 partial sums (as bytes). */
export function allocReducePartials(): DeviceArray {
  return allocDevice('u8', MAX_BLOCKS * 8);
}

function checkPair(op: string, a: DeviceArray, b: DeviceArray): void {
  expectDeviceDtype(a, 'f32', `${op}: a`);
  expectDeviceDtype(b, 'f32', `${op}: b`);
  expectDeviceLength(b, a.length, `${op}: b`);
}

function checkPartials(op: string, partials: DeviceArray): void {
  expectDeviceDtype(partials, 'u8', `${op}: partials`);
  expectDeviceLength(partials, MAX_BLOCKS * 8, `${op}: partials`, '(allocReducePartials)');
}

const partialBlocks = (n: number): number => Math.min(gridFor(n, BLOCK), MAX_BLOCKS);

/** Sum of the partials a launch over n elements left, in block order. */
function readPartials(partials: DeviceArray, n: number): number {
  const blocks = partialBlocks(n);
  const bytes = downloadDevice(partials, new Uint8Array(blocks * 8));
  const sums = new Float64Array(bytes.buffer, 0, blocks);
  let total = 0;
  for (let i = 0; i < blocks; i++) total += sums[i]!;
  return total;
}

/** Sum of squares of all elements (f64 accumulation); 0 for an empty array. */
export function sumSquaresCuda(a: DeviceArray, partials: DeviceArray): number {
  const op = 'sumSquaresCuda';
  expectDeviceDtype(a, 'f32', `${op}: a`);
  checkPartials(op, partials);
  if (a.length === 0) return 0;
  launchKernel(SUMSQ, partialBlocks(a.length), BLOCK, [partials, a, a.length]);
  return readPartials(partials, a.length);
}

/** Mean over all elements of (a - b)^2 (f64 sums); NaN for empty arrays, as the CPU op. */
export function mseForwardCuda(a: DeviceArray, b: DeviceArray, partials: DeviceArray): number {
  const op = 'mseForwardCuda';
  checkPair(op, a, b);
  checkPartials(op, partials);
  if (a.length === 0) return NaN;
  launchMse(a, b, partials);
  return readMseCuda(partials, a.length);
}

/** Queues the MSE of a and b (non-empty) into `partials`; readMseCuda(partials, a.length) reads it once the work has run. */
export function mseQueueCuda(a: DeviceArray, b: DeviceArray, partials: DeviceArray): void {
  const op = 'mseQueueCuda';
  checkPair(op, a, b);
  checkPartials(op, partials);
  if (a.length === 0) throw new RangeError(`${op}: empty arrays have no mean`);
  launchMse(a, b, partials);
}

/** The MSE's one launch: per-block partial sums of (a - b)^2 (arrays checked by the caller). */
function launchMse(a: DeviceArray, b: DeviceArray, partials: DeviceArray): void {
  launchKernel(PARTIAL, partialBlocks(a.length), BLOCK, [partials, a, b, a.length]);
}

/** The mean squared error mseQueueCuda left in `partials` for arrays of n elements (a device-to-host transfer). */
export function readMseCuda(partials: DeviceArray, n: number): number {
  checkPartials('readMseCuda', partials);
  return readPartials(partials, n) / n;
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
