// Causal grouped-query attention on CUDA over device arrays (forward and backward): the typed
// wrapper of native/cuda/kernels/attention.cu, with the layout and semantics of
// src/ops/attention.ts and its twin (src/ops/ref/attention.ts):
//   q, out, dout (B, Tq, H, D); k, v (B, Tk, Hkv, D); lse (B, H, Tq)
// Query head h reads kv head floor(h / (H / Hkv)); the forward saves the natural-log
// log-sum-exp of each query row's scaled scores; the backward ACCUMULATES (+=) into dq, dk, dv.
// Options as the CPU op: a sliding `window` and the decoding `qOffset` (default Tk - Tq).
// Head dims up to 256 (the kernels are instantiated for D <= 64, 128 and 256).
import {
  cudaKernel,
  deviceOverlaps,
  expectDeviceDtype,
  expectDeviceLength,
  launchKernel,
  type DeviceArray,
  type KernelSpec,
} from '../../engine/cuda.js';
import { resolveAttentionDims, type AttentionDims, type AttentionOptions } from '../attention.js';

/** The sizes of an attention call (device arrays carry no shapes). */
export interface AttentionShape {
  B: number;
  Tq: number;
  Tk: number;
  H: number;
  Hkv: number;
  D: number;
}

const THREADS = 128;
const HEAD_DIM_BOUNDS = [64, 128, 256] as const;
type Bound = (typeof HEAD_DIM_BOUNDS)[number];
const SCALARS = ['i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32'] as const;

const KERNELS = Object.fromEntries(
  HEAD_DIM_BOUNDS.map((dm) => [
    dm,
    {
      forward: cudaKernel('attention.cu', `eqat_attention_forward_d${dm}`, ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', ...SCALARS]),
      dq: cudaKernel('attention.cu', `eqat_attention_backward_dq_d${dm}`, ['ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', ...SCALARS]),
      dkv: cudaKernel('attention.cu', `eqat_attention_backward_dkv_d${dm}`, [
        'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', ...SCALARS,
      ]),
    },
  ]),
) as Record<Bound, { forward: KernelSpec; dq: KernelSpec; dkv: KernelSpec }>;

/** Query rows per tile of the forward and dq kernels (= keys per tile), for a head-dim bound. */
function tileRows(bound: Bound): number {
  return 2048 / bound;
}

/**
 * Checks the sizes and options (resolveAttentionDims in src/ops/attention.ts, plus the limits of
 * these kernels: integer sizes below 2^31, D <= 256, B and H within the grid). Throws a
 * RangeError naming `op` and the argument.
 */
export function attentionDimsCuda(op: string, shape: AttentionShape, opts: AttentionOptions = {}): AttentionDims {
  const { B, Tq, Tk, H, Hkv, D } = shape;
  for (const [name, n] of [['B', B], ['Tq', Tq], ['H', H], ['D', D], ['Tk', Tk], ['Hkv', Hkv]] as const) {
    if (!Number.isInteger(n) || n < 1 || n > 2 ** 31 - 1) throw new RangeError(`${op}: ${name} must be an integer >= 1, got ${n}`);
  }
  if (D > 256) throw new RangeError(`${op}: head dim D = ${D} is above the largest supported by the CUDA kernels (256)`);
  if (H > 65535 || B > 65535) throw new RangeError(`${op}: H and B must be <= 65535 (grid dimensions), got H=${H} B=${B}`);
  return resolveAttentionDims(op, { B, Tq, Tk, H, Hkv, D }, opts);
}

function bound(D: number): Bound {
  return HEAD_DIM_BOUNDS.find((b) => D <= b)!;
}

type AttentionArrays = Record<string, [DeviceArray, number, string]>;

/** Checks each array's dtype (f32) and length (with its shape in the message), and that no written array overlaps another. */
function checkAttentionArrays(op: string, arrays: AttentionArrays, written: readonly string[]): void {
  for (const [name, [a, n, shape]] of Object.entries(arrays)) {
    expectDeviceDtype(a, 'f32', `${op}: ${name}`);
    expectDeviceLength(a, n, `${op}: ${name}`, shape);
  }
  for (const w of written) {
    for (const [name, [a]] of Object.entries(arrays)) {
      if (name !== w && deviceOverlaps(arrays[w]![0], a)) throw new RangeError(`${op}: ${w} overlaps ${name}`);
    }
  }
}

/** Lengths and shape texts of q-shaped, kv-shaped and lse arrays. */
function attentionShapes(d: AttentionDims): { q: [number, string]; kv: [number, string]; lse: [number, string] } {
  return {
    q: [d.B * d.Tq * d.H * d.D, `(B=${d.B}, Tq=${d.Tq}, H=${d.H}, D=${d.D})`],
    kv: [d.B * d.Tk * d.Hkv * d.D, `(B=${d.B}, Tk=${d.Tk}, Hkv=${d.Hkv}, D=${d.D})`],
    lse: [d.B * d.H * d.Tq, `(B=${d.B}, H=${d.H}, Tq=${d.Tq})`],
  };
}

/** The forward's arrays (out, lse written; q, k, v read) against the dims: dtype, length, no overlap. */
export function checkAttentionForwardArrays(
  op: string,
  d: AttentionDims,
  a: { out: DeviceArray; lse: DeviceArray; q: DeviceArray; k: DeviceArray; v: DeviceArray },
): void {
  const s = attentionShapes(d);
  checkAttentionArrays(op, { out: [a.out, ...s.q], lse: [a.lse, ...s.lse], q: [a.q, ...s.q], k: [a.k, ...s.kv], v: [a.v, ...s.kv] }, ['out', 'lse']);
}

/** The backward's arrays (dq, dk, dv written; the rest read) against the dims: dtype, length, no overlap. */
export function checkAttentionBackwardArrays(
  op: string,
  d: AttentionDims,
  a: {
    dq: DeviceArray; dk: DeviceArray; dv: DeviceArray; dout: DeviceArray;
    q: DeviceArray; k: DeviceArray; v: DeviceArray; out: DeviceArray; lse: DeviceArray;
  },
): void {
  const s = attentionShapes(d);
  checkAttentionArrays(
    op,
    {
      dq: [a.dq, ...s.q], dk: [a.dk, ...s.kv], dv: [a.dv, ...s.kv], dout: [a.dout, ...s.q], q: [a.q, ...s.q], k: [a.k, ...s.kv],
      v: [a.v, ...s.kv], out: [a.out, ...s.q], lse: [a.lse, ...s.lse],
    },
    ['dq', 'dk', 'dv'],
  );
}

function scalars(d: AttentionDims): number[] {
  return [d.Tq, d.Tk, d.H, d.Hkv, d.D, d.window, d.qOffset, 1 / Math.sqrt(d.D)];
}

/**
 * out = softmax(q kᵀ / sqrt(D) + causal mask) v per head, and lse = the natural-log
 * log-sum-exp of each query row's scaled, masked scores (what the backward needs).
 */
export function attentionForwardCuda(
  out: DeviceArray, // (B, Tq, H, D)
  lse: DeviceArray, // (B, H, Tq)
  q: DeviceArray, // (B, Tq, H, D)
  k: DeviceArray, // (B, Tk, Hkv, D)
  v: DeviceArray, // (B, Tk, Hkv, D)
  shape: AttentionShape,
  opts: AttentionOptions = {},
): void {
  const op = 'attentionForwardCuda';
  const d = attentionDimsCuda(op, shape, opts);
  checkAttentionForwardArrays(op, d, { out, lse, q, k, v });
  const b = bound(d.D);
  launchKernel(KERNELS[b].forward, [Math.ceil(d.Tq / tileRows(b)), d.H, d.B], THREADS, [out, lse, q, k, v, ...scalars(d)]);
}

/**
 * Gradients of attentionForwardCuda. ACCUMULATES (+=) into dq, dk and dv. `out` and `lse` are
 * those the forward produced for the same q, k, v and options.
 */
export function attentionBackwardCuda(
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
  opts: AttentionOptions = {},
): void {
  const op = 'attentionBackwardCuda';
  const d = attentionDimsCuda(op, shape, opts);
  checkAttentionBackwardArrays(op, d, { dq, dk, dv, dout, q, k, v, out, lse });
  const b = bound(d.D);
  const rows = tileRows(b);
  launchKernel(KERNELS[b].dq, [Math.ceil(d.Tq / rows), d.H, d.B], THREADS, [dq, dout, q, k, v, out, lse, ...scalars(d)]);
  launchKernel(KERNELS[b].dkv, [Math.ceil(d.Tk / rows), d.Hkv, d.B], THREADS, [dk, dv, dout, q, k, v, out, lse, ...scalars(d)]);
}
