// Validation of token ids and targets that live on the device, for the CUDA embedding and
// cross-entropy wrappers: the CPU ops throw a RangeError naming the first bad row before writing
// anything, and these wrappers do the same by running the one-block search of
// native/cuda/kernels/indices.cu and reading back one int (plus the offending value). That read
// waits for the queued work (a synchronisation point); callers that already know their indices
// are valid pass `check: false` to the op and skip it.
import {
  allocDevice,
  cudaKernel,
  deviceView,
  downloadDevice,
  expectDeviceDtype,
  freeDevice,
  launchKernel,
  type DeviceArray,
  expectKernelInt,
} from '../../engine/cuda.js';

export interface IndexCheckOptions {
  /** Validate the indices on the device first (default true; costs one synchronisation). */
  check?: boolean;
}

const FIRST_BAD = cudaKernel('indices.cu', 'eqat_first_bad_index', ['ptr', 'ptr', 'i32', 'i32', 'i32', 'i32']);
const BLOCK = 256;

/**
 * The first row n < count whose ids[n] is outside [0, V) (an `ignore` value is allowed when
 * given), with its value; null when every index is valid.
 */
export function firstBadIndexCuda(
  ids: DeviceArray, // (count) i32
  count: number,
  V: number,
  ignore: number | null = null,
  what = 'firstBadIndexCuda',
): { row: number; value: number } | null {
  expectDeviceDtype(ids, 'i32', `${what}: ids`);
  if (!Number.isInteger(count) || count < 0 || count > ids.length) {
    throw new RangeError(`${what}: count must be an integer in [0, ${ids.length}], got ${count}`);
  }
  expectKernelInt(V, 0, `${what}: V`);
  if (count === 0) return null;
  const result = allocDevice('i32', 1);
  try {
    launchKernel(FIRST_BAD, 1, BLOCK, [result, ids, count, V, ignore ?? 0, ignore === null ? 0 : 1]);
    const row = downloadDevice<Int32Array>(result)[0]!;
    if (row < 0) return null;
    const value = downloadDevice(deviceView(ids, row, 1), new Int32Array(1))[0]!;
    return { row, value };
  } finally {
    freeDevice(result);
  }
}
