// Fake quantization on CUDA (forward and straight-through backward) over device arrays: the
// typed wrapper of native/cuda/kernels/fakequant.cu. Same layout and math as the CPU op
// (src/quant/fakequant.ts) and its twins fakeQuantForwardRef / fakeQuantBackwardRef
// (src/quant/primitives.ts): w is (O, I) row-major, scale and zero are (O, I/G), groups are G
// consecutive inputs.
import { cudaKernel, expectDeviceDtype, expectDisjoint, expectDeviceLength, gridFor, launchKernel, type DeviceArray } from '../../engine/cuda.js';
import { ADAMW_SCALARS } from '../../ops/cuda/adamw.js';
import { checkBits, checkGroupLayout, qmax } from '../primitives.js';

const BLOCK = 256;
const BACKWARD_TILE_GROUPS = 32;
const FORWARD = cudaKernel('fakequant.cu', 'eqat_fakequant_forward', ['ptr', 'ptr', 'ptr', 'ptr', 'i64', 'i32', 'i32']);
const FORWARD_BF16 = cudaKernel('fakequant.cu', 'eqat_fakequant_forward_bf16', ['ptr', 'ptr', 'ptr', 'ptr', 'i64', 'i32', 'i32']);
const FORWARD_BF16_X8 = cudaKernel('fakequant.cu', 'eqat_fakequant_forward_bf16_x8', ['ptr', 'ptr', 'ptr', 'ptr', 'i64', 'i32', 'i32']);
const BACKWARD = cudaKernel('fakequant.cu', 'eqat_fakequant_backward', [
  'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i64', 'i32', 'i32',
]);
const BACKWARD_ADAMW = cudaKernel('fakequant.cu', 'eqat_fakequant_backward_adamw', [
  'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'i64', 'i32', 'i32',
]);

function dims(
  op: string,
  O: number,
  I: number,
  bits: number,
  G: number,
  weightShaped: Record<string, DeviceArray>,
  groupShaped: Record<string, DeviceArray>,
): { n: number; groups: number; qm: number } {
  checkBits(bits, op);
  checkGroupLayout(O, I, G, op);
  const n = O * I;
  const groups = n / G;
  for (const [name, a] of Object.entries(weightShaped)) {
    expectDeviceDtype(a, 'f32', `${op}: ${name}`);
    expectDeviceLength(a, n, `${op}: ${name}`, `(O=${O}, I=${I})`);
  }
  for (const [name, a] of Object.entries(groupShaped)) {
    expectDeviceDtype(a, 'f32', `${op}: ${name}`);
    expectDeviceLength(a, groups, `${op}: ${name}`, `(O=${O}, I/G=${I / G})`);
  }
  return { n, groups, qm: qmax(bits) };
}

/**
 * out (O, I) = fake-quantized w (O, I) with per-group scale and zero (O, I/G). Overwrites out;
 * an f32 out gets the values, a bf16 one their bf16 rounding (a bf16 GEMM's weight, made in one pass).
 */
export function fakeQuantForwardCuda(
  out: DeviceArray, // (O, I) f32 or bf16
  w: DeviceArray, // (O, I)
  scale: DeviceArray, // (O, I/G)
  zero: DeviceArray, // (O, I/G)
  O: number,
  I: number,
  bits: number,
  G: number,
): void {
  const op = 'fakeQuantForwardCuda';
  const bf16 = out.dtype === 'bf16';
  if (bf16) expectDeviceLength(out, O * I, `${op}: out`, `(O=${O}, I=${I})`);
  const { n, qm } = dims(op, O, I, bits, G, bf16 ? { w } : { out, w }, { scale, zero });
  const args = [out, w, scale, zero, n, G, qm];
  // eight elements of one group per thread when groups and addresses allow 16-byte accesses
  if (bf16 && G % 8 === 0 && w.handle % 16n === 0n && out.handle % 16n === 0n) launchKernel(FORWARD_BF16_X8, gridFor(n / 8, BLOCK), BLOCK, args);
  else launchKernel(bf16 ? FORWARD_BF16 : FORWARD, gridFor(n, BLOCK), BLOCK, args);
}

/**
 * Straight-through backward; accumulates (+=) dw (O, I), dscale and dzero (O, I/G). With dw
 * null only dscale and dzero are formed (the weights are not being trained).
 */
export function fakeQuantBackwardCuda(
  dw: DeviceArray | null, // (O, I) +=
  dscale: DeviceArray, // (O, I/G) +=
  dzero: DeviceArray, // (O, I/G) +=
  dout: DeviceArray, // (O, I)
  w: DeviceArray, // (O, I)
  scale: DeviceArray, // (O, I/G)
  zero: DeviceArray, // (O, I/G)
  O: number,
  I: number,
  bits: number,
  G: number,
): void {
  const { groups, qm } = dims('fakeQuantBackwardCuda', O, I, bits, G, dw ? { dw, dout, w } : { dout, w }, { dscale, dzero, scale, zero });
  // one block per tile of BACKWARD_TILE_GROUPS groups (kTileGroups in fakequant.cu)
  launchKernel(BACKWARD, gridFor(groups, BACKWARD_TILE_GROUPS), BLOCK, [dw ?? 0n, dscale, dzero, dout, w, scale, zero, groups, G, qm]);
}

/**
 * The straight-through backward with the weight's AdamW step fused in: w (O, I) and its moments
 * m, v are updated with the weight gradient as it forms (the scalars last written to `scalars`,
 * see src/ops/cuda/adamw.ts), exactly as fakeQuantBackwardCuda into a zeroed buffer followed by
 * an AdamW step over it, with no gradient buffer; dscale and dzero (O, I/G) accumulate (+=).
 */
export function fakeQuantBackwardAdamwCuda(
  w: DeviceArray, // (O, I) updated
  m: DeviceArray, // (O, I) updated
  v: DeviceArray, // (O, I) updated
  scalars: DeviceArray, // (ADAMW_SCALARS)
  dscale: DeviceArray, // (O, I/G) +=
  dzero: DeviceArray, // (O, I/G) +=
  dout: DeviceArray, // (O, I)
  scale: DeviceArray, // (O, I/G)
  zero: DeviceArray, // (O, I/G)
  O: number,
  I: number,
  bits: number,
  G: number,
): void {
  const op = 'fakeQuantBackwardAdamwCuda';
  const { groups, qm } = dims(op, O, I, bits, G, { w, m, v, dout }, { dscale, dzero, scale, zero });
  expectDisjoint(op, [['w', w], ['m', m], ['v', v], ['dout', dout]]);
  expectDeviceDtype(scalars, 'f32', `${op}: scalars`);
  expectDeviceLength(scalars, ADAMW_SCALARS, `${op}: scalars`);
  launchKernel(BACKWARD_ADAMW, gridFor(groups, BACKWARD_TILE_GROUPS), BLOCK, [w, m, v, scalars, dscale, dzero, dout, scale, zero, groups, G, qm]);
}
