// Rotary position embedding on CUDA over device arrays: the typed wrapper of
// native/cuda/kernels/rope.cu. Same layout and math as src/ops/rope.ts and its twins
// (src/ops/ref/rope.ts): x (B, T, H, D) in the rotate_half layout, cos and sin (T, D/2) from
// ropeTables() in src/model/rope.ts (every scaling type is a table computed on the host and
// uploaded once). The forward may run in place; the backward accumulates.
import {
  cudaKernel,
  deviceOverlaps,
  expectDeviceDtype,
  expectDeviceLength,
  gridFor,
  launchKernel,
  type DeviceArray,
  expectKernelInt,
} from '../../engine/cuda.js';

const BLOCK = 256;
const FORWARD = cudaKernel('rope.cu', 'eqat_rope_forward', ['ptr', 'ptr', 'ptr', 'ptr', 'i64', 'i32', 'i32', 'i32']);
const BACKWARD = cudaKernel('rope.cu', 'eqat_rope_backward', ['ptr', 'ptr', 'ptr', 'ptr', 'i64', 'i32', 'i32', 'i32']);

function check(
  op: string,
  dst: DeviceArray,
  dstName: string,
  src: DeviceArray,
  srcName: string,
  cos: DeviceArray,
  sin: DeviceArray,
  B: number,
  T: number,
  H: number,
  D: number,
): number {
  for (const [name, v] of [['B', B], ['T', T], ['H', H], ['D', D]] as const) {
    expectKernelInt(v, 1, `${op}: ${name}`);
  }
  if (D % 2 !== 0) throw new RangeError(`${op}: head dim D must be even and >= 2, got ${D}`);
  const n = B * T * H * D;
  const shape = `(B=${B}, T=${T}, H=${H}, D=${D})`;
  for (const [a, name, len, sh] of [
    [dst, dstName, n, shape],
    [src, srcName, n, shape],
    [cos, 'cos', (T * D) / 2, `(T=${T}, D/2=${D / 2})`],
    [sin, 'sin', (T * D) / 2, `(T=${T}, D/2=${D / 2})`],
  ] as const) {
    expectDeviceDtype(a, 'f32', `${op}: ${name}`);
    expectDeviceLength(a, len, `${op}: ${name}`, sh);
  }
  for (const t of [cos, sin]) {
    if (deviceOverlaps(dst, t)) throw new RangeError(`${op}: ${dstName} overlaps the ${t === cos ? 'cos' : 'sin'} table`);
  }
  return n / 2;
}

/** Rotates x by the per-position angles into out; out may be x itself (in place). */
export function ropeForwardCuda(
  out: DeviceArray, // (B, T, H, D)
  x: DeviceArray, // (B, T, H, D)
  cos: DeviceArray, // (T, D/2)
  sin: DeviceArray, // (T, D/2)
  B: number,
  T: number,
  H: number,
  D: number,
): void {
  const op = 'ropeForwardCuda';
  const pairs = check(op, out, 'out', x, 'x', cos, sin, B, T, H, D);
  if (out.handle !== x.handle && deviceOverlaps(out, x)) {
    throw new RangeError(`${op}: out overlaps x in part; pass the same array (in place) or disjoint memory`);
  }
  launchKernel(FORWARD, gridFor(pairs, BLOCK), BLOCK, [out, x, cos, sin, pairs, T, H, D / 2]);
}

/** Accumulates (+=) into dx the inverse rotation of dout (the gradient of ropeForwardCuda). */
export function ropeBackwardCuda(
  dx: DeviceArray, // (B, T, H, D) +=
  dout: DeviceArray, // (B, T, H, D)
  cos: DeviceArray, // (T, D/2)
  sin: DeviceArray, // (T, D/2)
  B: number,
  T: number,
  H: number,
  D: number,
): void {
  const op = 'ropeBackwardCuda';
  const pairs = check(op, dx, 'dx', dout, 'dout', cos, sin, B, T, H, D);
  if (deviceOverlaps(dx, dout)) throw new RangeError(`${op}: dx and dout must not share memory`);
  launchKernel(BACKWARD, gridFor(pairs, BLOCK), BLOCK, [dx, dout, cos, sin, pairs, T, H, D / 2]);
}
