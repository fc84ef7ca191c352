// SwiGLU on CUDA over device arrays (out = silu(gate) * up, elementwise): the typed wrapper of
// native/cuda/kernels/swiglu.cu. Same math as src/ops/swiglu.ts and its twins
// (src/ops/ref/swiglu.ts); the backward accumulates.
import { cudaKernel, expectDeviceDtype, expectDeviceLength, gridFor, launchKernel, type DeviceArray } from '../../engine/cuda.js';

const BLOCK = 256;
const FORWARD = cudaKernel('swiglu.cu', 'eqat_swiglu_forward', ['ptr', 'ptr', 'ptr', 'ptr', 'i64']);
const BACKWARD = cudaKernel('swiglu.cu', 'eqat_swiglu_backward', ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i64']);

function check(op: string, gate: DeviceArray, named: Record<string, DeviceArray>): number {
  expectDeviceDtype(gate, 'f32', `${op}: gate`);
  for (const [name, a] of Object.entries(named)) {
    expectDeviceDtype(a, 'f32', `${op}: ${name}`);
    expectDeviceLength(a, gate.length, `${op}: ${name}`, '(as gate)');
  }
  return gate.length;
}

/** out = silu(gate) * up; a bf16 `out` receives the values rounded to bf16 (for bf16 GEMM inputs). */
export function swigluForwardCuda(
  out: DeviceArray, // (N, F) f32 or bf16
  gate: DeviceArray, // (N, F)
  up: DeviceArray, // (N, F)
): void {
  const op = 'swigluForwardCuda';
  const n = check(op, gate, { up });
  if (out.dtype !== 'bf16') expectDeviceDtype(out, 'f32', `${op}: out`);
  expectDeviceLength(out, n, `${op}: out`, '(as gate)');
  if (n === 0) return;
  const [o32, o16] = out.dtype === 'bf16' ? [0n, out] : [out, 0n];
  launchKernel(FORWARD, gridFor(n, BLOCK), BLOCK, [o32, o16, gate, up, n]);
}

/** Accumulates (+=) dgate = dout * up * silu'(gate) and dup = dout * silu(gate). */
export function swigluBackwardCuda(
  dgate: DeviceArray, // (N, F) +=
  dup: DeviceArray, // (N, F) +=
  dout: DeviceArray, // (N, F)
  gate: DeviceArray, // (N, F)
  up: DeviceArray, // (N, F)
): void {
  const n = check('swigluBackwardCuda', gate, { dgate, dup, dout, up });
  if (n === 0) return;
  launchKernel(BACKWARD, gridFor(n, BLOCK), BLOCK, [dgate, dup, dout, gate, up, n]);
}
