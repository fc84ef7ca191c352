// RMSNorm on CUDA over device arrays: the typed wrapper of native/cuda/kernels/rmsnorm.cu.
// x is (rows, C) row-major (all leading dimensions merged), weight (C), rstd (rows). Same math
// as src/ops/rmsnorm.ts and its twins (src/ops/ref/rmsnorm.ts); the backward accumulates.
import { cudaKernel, expectDeviceDtype, expectDeviceLength, expectKernelInt, launchKernel, type DeviceArray } from '../../engine/cuda.js';

const FORWARD = cudaKernel('rmsnorm.cu', 'eqat_rmsnorm_forward', ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32', 'f32']);
const BACKWARD_DX = cudaKernel('rmsnorm.cu', 'eqat_rmsnorm_backward_dx', ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32']);
const BACKWARD_DW = cudaKernel('rmsnorm.cu', 'eqat_rmsnorm_backward_dweight', ['ptr', 'ptr', 'ptr', 'ptr', 'i32', 'i32']);

const MAX_ROW_BLOCKS = 1 << 20;

function checkDims(op: string, rows: number, C: number): void {
  expectKernelInt(rows, 0, `${op}: rows`);
  expectKernelInt(C, 1, `${op}: C`);
}

function checkAll(op: string, rows: number, C: number, arrays: Record<string, [DeviceArray, number, string]>): void {
  checkDims(op, rows, C);
  for (const [name, [a, n, shape]] of Object.entries(arrays)) {
    expectDeviceDtype(a, 'f32', `${op}: ${name}`);
    expectDeviceLength(a, n, `${op}: ${name}`, shape);
  }
}

/** Threads per row block: C rounded up to a warp, at most 256 (a multiple of 32, as block_sum needs). */
function rowBlock(C: number): number {
  return Math.min(256, 32 * Math.ceil(C / 32));
}

/**
 * out = weight * x * rstd per row; rstd = 1 / sqrt(mean(x^2) + eps). A bf16 `out` receives the
 * values rounded to bf16 (what converting the f32 output would give), for bf16 GEMM inputs.
 */
export function rmsnormForwardCuda(
  out: DeviceArray, // (rows, C) f32 or bf16
  rstd: DeviceArray, // (rows)
  x: DeviceArray, // (rows, C)
  weight: DeviceArray, // (C)
  rows: number,
  C: number,
  eps: number,
): void {
  const op = 'rmsnormForwardCuda';
  const n = rows * C;
  checkAll(op, rows, C, { rstd: [rstd, rows, '(rows)'], x: [x, n, '(rows, C)'], weight: [weight, C, '(C)'] });
  if (out.dtype !== 'bf16') expectDeviceDtype(out, 'f32', `${op}: out`);
  expectDeviceLength(out, n, `${op}: out`, '(rows, C)');
  if (!Number.isFinite(eps) || eps < 0) throw new RangeError(`${op}: eps must be a finite number >= 0, got ${eps}`);
  if (rows === 0) return;
  const [o32, o16] = out.dtype === 'bf16' ? [0n, out] : [out, 0n];
  launchKernel(FORWARD, Math.min(rows, MAX_ROW_BLOCKS), rowBlock(C), [o32, o16, rstd, x, weight, rows, C, eps]);
}

/** Accumulates (+=) the gradients of rmsnormForwardCuda into dx and dweight. */
export function rmsnormBackwardCuda(
  dx: DeviceArray, // (rows, C) +=
  dweight: DeviceArray, // (C) +=
  dout: DeviceArray, // (rows, C)
  x: DeviceArray, // (rows, C)
  weight: DeviceArray, // (C)
  rstd: DeviceArray, // (rows)
  rows: number,
  C: number,
): void {
  const op = 'rmsnormBackwardCuda';
  const n = rows * C;
  checkAll(op, rows, C, {
    dx: [dx, n, '(rows, C)'],
    dweight: [dweight, C, '(C)'],
    dout: [dout, n, '(rows, C)'],
    x: [x, n, '(rows, C)'],
    weight: [weight, C, '(C)'],
    rstd: [rstd, rows, '(rows)'],
  });
  if (rows === 0) return;
  launchKernel(BACKWARD_DX, Math.min(rows, MAX_ROW_BLOCKS), rowBlock(C), [dx, dout, x, weight, rstd, rows, C]);
  // block b: columns 32b .. 32b + 31 (kCols in rmsnorm.cu), 256 threads loading row tiles
  launchKernel(BACKWARD_DW, Math.min(Math.ceil(C / 32), 1 << 16), 256, [dweight, dout, x, rstd, rows, C]);
}
