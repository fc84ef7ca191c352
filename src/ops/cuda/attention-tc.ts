// Causal grouped-query attention on CUDA tensor cores: the typed wrapper of
// native/cuda/kernels/attention_tc.cu. Same op as src/ops/cuda/attention.ts and
// attention-gemm.ts (layout, options, saved lse, accumulating backward; twin
// src/ops/ref/attention.ts):
//   q, out, dout (B, Tq, H, D); k, v (B, Tk, Hkv, D); lse (B, H, Tq)
// in the precision of attention-gemm.ts's 'bf16' (bf16 products, f32 sums), with no score
// chunk in memory and three launches per direction at most (forward; delta, dq, dk/dv).
// Head dims 64 and 128 only; attentionTcUnsupported says why a shape is not taken.
import {
  cudaKernel,
  DeviceAllocations,
  expectDeviceDtype,
  expectDeviceLength,
  expectDisjoint,
  launchKernel,
  type DeviceArray,
  type KernelSpec,
} from '../../engine/cuda.js';
import type { AttentionDims, AttentionOptions } from '../attention.js';
import { attentionDimsCuda, checkAttentionBackwardArrays, checkAttentionForwardArrays, type AttentionShape } from './attention.js';
import { attentionDeltaCuda } from './attention-gemm.js';

const THREADS = 128;
const ROWS = 64; // query rows per forward / dq block, keys per dk/dv block
const HEAD_DIMS = [64, 128] as const;
type HeadDim = (typeof HEAD_DIMS)[number];
const SCALARS = ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32'] as const; // Tq Tk H Hkv window qOffset scale

const KERNELS = Object.fromEntries(
  HEAD_DIMS.map((D) => [
    D,
    {
      forward: cudaKernel('attention_tc.cu', `eqat_attention_tc_forward_d${D}`, ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', ...SCALARS]),
      dq: cudaKernel('attention_tc.cu', `eqat_attention_tc_backward_dq_d${D}`, ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', ...SCALARS]),
      dkv: cudaKernel('attention_tc.cu', `eqat_attention_tc_backward_dkv_d${D}`, [
        'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', ...SCALARS,
      ]),
    },
  ]),
) as Record<HeadDim, { forward: KernelSpec; dq: KernelSpec; dkv: KernelSpec }>;

/** Why the tensor-core kernels cannot take this shape, or null when they can. */
export function attentionTcUnsupported(shape: AttentionShape): string | null {
  if (!(HEAD_DIMS as readonly number[]).includes(shape.D)) return `head dim ${shape.D} (the tensor-core kernels take ${HEAD_DIMS.join(' or ')})`;
  return null;
}

function kernels(op: string, d: AttentionDims): { forward: KernelSpec; dq: KernelSpec; dkv: KernelSpec } {
  const why = attentionTcUnsupported(d);
  if (why !== null) throw new RangeError(`${op}: unsupported ${why}`);
  return KERNELS[d.D as HeadDim];
}

function scalars(d: AttentionDims): number[] {
  return [d.Tq, d.Tk, d.H, d.Hkv, d.window, d.qOffset, 1 / Math.sqrt(d.D)];
}

/** The backward's device scratch for one shape, allocated once: delta (B, H, Tq) f32 (empty without `training`). */
export class AttentionTcScratch {
  readonly delta: DeviceArray;
  private readonly mem = new DeviceAllocations();

  constructor(
    readonly shape: AttentionShape,
    { training = true }: { training?: boolean } = {},
  ) {
    this.delta = this.mem.alloc('f32', training ? shape.B * shape.H * shape.Tq : 0);
  }

  free(): void {
    this.mem.free();
  }
}

/**
 * out = softmax(q kᵀ / sqrt(D) + causal mask) v per head and the rows' lse, on tensor cores;
 * with `out16`, also out rounded to bf16 (what converting out would give).
 */
export function attentionTcForwardCuda(
  out: DeviceArray, // (B, Tq, H, D)
  lse: DeviceArray, // (B, H, Tq)
  q: DeviceArray, // (B, Tq, H, D)
  k: DeviceArray, // (B, Tk, Hkv, D)
  v: DeviceArray, // (B, Tk, Hkv, D)
  shape: AttentionShape,
  opts: AttentionOptions = {},
  out16: DeviceArray | null = null, // (B, Tq, H, D) bf16
): void {
  const op = 'attentionTcForwardCuda';
  const d = attentionDimsCuda(op, shape, opts);
  const kern = kernels(op, d);
  checkAttentionForwardArrays(op, d, { out, lse, q, k, v });
  if (out16) {
    expectDeviceDtype(out16, 'bf16', `${op}: out16`);
    expectDeviceLength(out16, out.length, `${op}: out16`, '(as out)');
    expectDisjoint(op, [['out16', out16], ['out', out], ['lse', lse], ['q', q], ['k', k], ['v', v]]);
  }
  launchKernel(kern.forward, [Math.ceil(d.Tq / ROWS), d.H, d.B], THREADS, [out, out16 ?? 0n, lse, q, k, v, ...scalars(d)]);
}

/**
 * Gradients of attentionTcForwardCuda; ACCUMULATES (+=) into dq, dk and dv. `out` and `lse` are
 * the forward's for the same inputs; `scratch` was made for this shape.
 */
export function attentionTcBackwardCuda(
  dq: DeviceArray, // (B, Tq, H, D) +=
  dk: DeviceArray, // (B, Tk, Hkv, D) +=
  dv: DeviceArray, // (B, Tk, Hkv, D) +=
  dout: DeviceArray, // (B, Tq, H, D)
  q: DeviceArray, // (B, Tq, H, D)
  k: DeviceArray, // (B, Tk, Hkv, D)
  v: DeviceArray, // (B, Tk, Hkv, D)
  out: DeviceArray, // (B, Tq, H, D)
  lse: DeviceArray, // (B, H, Tq)
  shape: AttentionShape,
  opts: AttentionOptions,
  scratch: AttentionTcScratch,
): void {
  const op = 'attentionTcBackwardCuda';
  const d = attentionDimsCuda(op, shape, opts);
  const kern = kernels(op, d);
  const sh = scratch.shape;
  if (sh.B !== d.B || sh.Tq !== d.Tq || sh.H !== d.H) throw new RangeError(`${op}: the scratch was made for another shape`);
  if (scratch.delta.length === 0) throw new RangeError(`${op}: the scratch was made without the backward's buffers`);
  checkAttentionBackwardArrays(op, d, { dq, dk, dv, dout, q, k, v, out, lse });
  const { delta } = scratch;
  attentionDeltaCuda(delta, dout, out, d);
  launchKernel(kern.dq, [Math.ceil(d.Tq / ROWS), d.H, d.B], THREADS, [dq, dout, q, k, v, lse, delta, ...scalars(d)]);
  launchKernel(kern.dkv, [Math.ceil(d.Tk / ROWS), d.Hkv, d.B], THREADS, [dk, dv, dout, q, k, v, lse, delta, ...scalars(d)]);
}
