// Softmax cross-entropy on CUDA over device arrays: the typed wrapper of
// native/cuda/kernels/crossentropy.cu, with the semantics of src/ops/crossentropy.ts and its
// twin (src/ops/ref/crossentropy.ts): logits (N, V) f32 (all leading dims merged), targets (N)
// i32, losses (N) f32; a target of -100 is ignored (loss 0, zero gradient row); the backward
// OVERWRITES dlogits with scale * (softmax - onehot) and may run in place (dlogits = logits).
// A target outside [0, V) other than -100 throws the CPU op's RangeError naming the row before
// anything is written (src/ops/cuda/indices.ts; one small read-back, skipped with
// `check: false`, in which case such a row gets a NaN loss and gradient).
//
// The fused pass reads its gradient scale from device memory (one f64: allocLossScale,
// writeLossScale), so a training step captured in a CUDA graph takes each replay's scale.
import {
  allocDevice,
  cudaKernel,
  uploadDevice,
  deviceOverlaps,
  expectDeviceDtype,
  expectDeviceLength,
  launchKernel,
  type DeviceArray,
  expectKernelInt,
} from '../../engine/cuda.js';
import { crossEntropyTargetError, IGNORE_INDEX } from '../crossentropy.js';
import { firstBadIndexCuda, type IndexCheckOptions } from './indices.js';

const FORWARD = cudaKernel('crossentropy.cu', 'eqat_cross_entropy_forward', ['ptr', 'ptr', 'ptr', 'i32', 'i32']);
const BACKWARD = cudaKernel('crossentropy.cu', 'eqat_cross_entropy_backward', ['ptr', 'ptr', 'ptr', 'i32', 'i32', 'f64']);
const FUSED = cudaKernel('crossentropy.cu', 'eqat_cross_entropy_forward_backward', ['ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'ptr']);

const MAX_ROW_BLOCKS = 1 << 20;

/** Threads per row block: V rounded up to a warp, at most 512. */
function rowBlock(V: number): number {
  return Math.min(512, 32 * Math.max(1, Math.ceil(V / 32)));
}

function checkArgs(
  op: string,
  logits: DeviceArray,
  targets: DeviceArray,
  N: number,
  V: number,
  opts: IndexCheckOptions,
  losses: DeviceArray | null,
  dlogits: DeviceArray | null,
  scale: number | null,
): void {
  expectKernelInt(N, 0, `${op}: N`);
  expectKernelInt(V, 1, `${op}: V`);
  expectDeviceDtype(logits, 'f32', `${op}: argument 'logits'`);
  expectDeviceLength(logits, N * V, `${op}: argument 'logits'`, `(N=${N}, V=${V})`);
  expectDeviceDtype(targets, 'i32', `${op}: argument 'targets'`);
  expectDeviceLength(targets, N, `${op}: argument 'targets'`, `(N=${N}, one per row of 'logits')`);
  if (losses) {
    expectDeviceDtype(losses, 'f32', `${op}: argument 'losses'`);
    expectDeviceLength(losses, N, `${op}: argument 'losses'`, `(N=${N}, one per row of 'logits')`);
  }
  if (dlogits) {
    expectDeviceDtype(dlogits, 'f32', `${op}: argument 'dlogits'`);
    expectDeviceLength(dlogits, N * V, `${op}: argument 'dlogits'`, `(N=${N}, V=${V})`);
    const same = dlogits.handle === logits.handle && dlogits.length === logits.length;
    if (!same && deviceOverlaps(dlogits, logits)) {
      throw new RangeError(`${op}: argument 'dlogits' overlaps 'logits' in part; pass the same array or disjoint memory`);
    }
    if (deviceOverlaps(dlogits, targets)) throw new RangeError(`${op}: argument 'dlogits' overlaps 'targets'`);
  }
  if (losses) {
    for (const [a, name] of [[logits, 'logits'], [targets, 'targets'], [dlogits, 'dlogits']] as const) {
      if (a && deviceOverlaps(losses, a)) throw new RangeError(`${op}: argument 'losses' overlaps '${name}'`);
    }
  }
  if (scale !== null && typeof scale !== 'number') throw new TypeError(`${op}: argument 'scale' must be a number, got ${typeof scale}`);
  if (opts.check !== false) {
    const bad = firstBadIndexCuda(targets, N, V, IGNORE_INDEX, op);
    if (bad) throw crossEntropyTargetError(op, bad.row, bad.value, V);
  }
}

/**
 * losses[n] = logsumexp(logits[n, :]) - logits[n, targets[n]]  (0 where targets[n] = -100).
 */
export function crossEntropyForwardCuda(
  losses: DeviceArray, // (N)
  logits: DeviceArray, // (N, V)
  targets: DeviceArray, // (N) i32
  N: number,
  V: number,
  opts: IndexCheckOptions = {},
): void {
  const op = 'crossEntropyForwardCuda';
  checkArgs(op, logits, targets, N, V, opts, losses, null, null);
  if (N === 0) return;
  launchKernel(FORWARD, Math.min(N, MAX_ROW_BLOCKS), rowBlock(V), [losses, logits, targets, N, V]);
}

/**
 * OVERWRITES dlogits with scale * (softmax(logits) - onehot(targets)); rows with target -100
 * become zero. dlogits may be logits itself (in place).
 */
export function crossEntropyBackwardCuda(
  dlogits: DeviceArray, // (N, V)
  logits: DeviceArray, // (N, V)
  targets: DeviceArray, // (N) i32
  N: number,
  V: number,
  scale: number,
  opts: IndexCheckOptions = {},
): void {
  const op = 'crossEntropyBackwardCuda';
  checkArgs(op, logits, targets, N, V, opts, null, dlogits, scale);
  if (N === 0) return;
  launchKernel(BACKWARD, Math.min(N, MAX_ROW_BLOCKS), rowBlock(V), [dlogits, logits, targets, N, V, scale]);
}

/** Device home of the fused pass's gradient scale: one f64, as 8 bytes (write it with writeLossScale). */
export function allocLossScale(): DeviceArray {
  return allocDevice('u8', 8);
}

/** Stores `scale` (a finite number) for the fused pass. */
export function writeLossScale(buf: DeviceArray, scale: number): void {
  expectDeviceDtype(buf, 'u8', "writeLossScale: argument 'buf'");
  expectDeviceLength(buf, 8, "writeLossScale: argument 'buf'", '(allocLossScale)');
  if (typeof scale !== 'number' || !Number.isFinite(scale)) throw new TypeError(`writeLossScale: scale must be a finite number, got ${scale}`);
  uploadDevice(buf, new Uint8Array(new Float64Array([scale]).buffer));
}

/**
 * crossEntropyForwardCuda and crossEntropyBackwardCuda in one pass over each row's statistics,
 * with the scale last written to `scale` (allocLossScale / writeLossScale).
 */
export function crossEntropyForwardBackwardCuda(
  losses: DeviceArray, // (N)
  dlogits: DeviceArray, // (N, V)
  logits: DeviceArray, // (N, V)
  targets: DeviceArray, // (N) i32
  N: number,
  V: number,
  scale: DeviceArray, // one f64 (allocLossScale)
  opts: IndexCheckOptions = {},
): void {
  const op = 'crossEntropyForwardBackwardCuda';
  expectDeviceDtype(scale, 'u8', `${op}: argument 'scale'`);
  expectDeviceLength(scale, 8, `${op}: argument 'scale'`, '(allocLossScale)');
  checkArgs(op, logits, targets, N, V, opts, losses, dlogits, null);
  if (N === 0) return;
  launchKernel(FUSED, Math.min(N, MAX_ROW_BLOCKS), rowBlock(V), [losses, dlogits, logits, targets, N, V, scale]);
}
