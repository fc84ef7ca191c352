// Causal self-attention with grouped-query heads (forward and backward): shape checks and the
// call into the flash-style native kernel (native/cpu/attention.cc). Twin: src/ops/ref/attention.ts.
//
// Layout is that of the q/k/v projection outputs viewed per head, with no transposes:
// q, out, dout (B, Tq, H, D); k, v (B, Tk, Hkv, D); lse (B, H, Tq). Query head h reads kv head
// floor(h / (H / Hkv)). The forward saves only the log-sum-exp of each query row's scaled
// scores; the backward recomputes the probabilities from it.
import { nativeFn } from '../engine/native.js';
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';

export interface AttentionOptions {
  /** Mistral-style sliding window: query t sees keys j with t - window < j <= t. null/undefined = full causal. */
  window?: number | null;
  /**
   * Absolute position of the first query row relative to the first key (for decoding with a
   * cache): query i sits at position qOffset + i, keys at 0..Tk-1. Must lie in [0, Tk - Tq].
   * Default Tk - Tq (= 0 when Tq == Tk): the queries are the last Tq positions.
   */
  qOffset?: number;
}

/** The sizes of one attention call, resolved and checked. window 0 means none. */
export interface AttentionDims {
  B: number;
  Tq: number;
  Tk: number;
  H: number;
  Hkv: number;
  D: number;
  window: number;
  qOffset: number;
}

function rank4(op: string, t: Tensor, name: string, layout: string): readonly number[] {
  if (t.rank !== 4) throw new RangeError(`${op}: ${name}: expected rank 4 ${layout}, got shape [${t.shape.join(', ')}]`);
  expectDtype(t, 'f32', `${op}: ${name}`);
  return t.shape;
}

/**
 * Checks q (B, Tq, H, D), k and v (B, Tk, Hkv, D) and the options; returns the sizes. Throws a
 * RangeError naming `op` and the offending argument.
 */
export function attentionDims(op: string, q: Tensor, k: Tensor, v: Tensor, opts: AttentionOptions = {}): AttentionDims {
  const [B, Tq, H, D] = rank4(op, q, 'q', '(B, Tq, H, D)') as [number, number, number, number];
  const [Bk, Tk, Hkv, Dk] = rank4(op, k, 'k', '(B, Tk, Hkv, D)') as [number, number, number, number];
  rank4(op, v, 'v', '(B, Tk, Hkv, D)');
  if (Bk !== B) throw new RangeError(`${op}: k: batch ${Bk} does not match q's batch ${B}`);
  if (Dk !== D) throw new RangeError(`${op}: k: head dim ${Dk} does not match q's head dim ${D}`);
  expectShape(v, [B, Tk, Hkv, D], `${op}: v`);
  return resolveAttentionDims(op, { B, Tq, Tk, H, Hkv, D }, opts);
}

/**
 * The checks every attention implementation shares once the sizes are known (positive sizes,
 * whole query heads per kv head, Tq <= Tk, window, qOffset), resolving the options: window 0
 * means none, else min(window, Tk); qOffset defaults to Tk - Tq. Throws a RangeError naming `op`.
 */
export function resolveAttentionDims(
  op: string,
  sizes: { B: number; Tq: number; Tk: number; H: number; Hkv: number; D: number },
  opts: AttentionOptions = {},
): AttentionDims {
  const { B, Tq, Tk, H, Hkv, D } = sizes;
  for (const [name, n] of [['B', B], ['Tq', Tq], ['H', H], ['D', D], ['Tk', Tk], ['Hkv', Hkv]] as const) {
    if (n < 1) throw new RangeError(`${op}: ${name} must be >= 1, got ${n}`);
  }
  if (H % Hkv !== 0) throw new RangeError(`${op}: q: ${H} query heads is not a multiple of k's ${Hkv} kv heads`);
  if (Tq > Tk) throw new RangeError(`${op}: q: ${Tq} query rows but only ${Tk} keys (Tq must be <= Tk)`);
  const window = opts.window ?? null;
  if (window !== null && (!Number.isInteger(window) || window < 1)) {
    throw new RangeError(`${op}: window must be a positive integer or null, got ${window}`);
  }
  const qOffset = opts.qOffset ?? Tk - Tq;
  if (!Number.isInteger(qOffset) || qOffset < 0 || qOffset > Tk - Tq) {
    throw new RangeError(`${op}: qOffset must be an integer in [0, ${Tk - Tq}] (Tk - Tq), got ${qOffset}`);
  }
  return { B, Tq, Tk, H, Hkv, D, window: window === null ? 0 : Math.min(window, Tk), qOffset };
}

type ForwardFn = (
  out: Float32Array, lse: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array,
  B: number, Tq: number, Tk: number, H: number, Hkv: number, D: number, window: number, qOffset: number,
) => void;
type BackwardFn = (
  dq: Float32Array, dk: Float32Array, dv: Float32Array, dout: Float32Array,
  q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, lse: Float32Array,
  B: number, Tq: number, Tk: number, H: number, Hkv: number, D: number, window: number, qOffset: number,
) => void;

/**
 * out = softmax(q kᵀ / sqrt(D) + causal mask) v per head, and lse = the natural-log
 * log-sum-exp of each query row's scaled, masked scores (what the backward needs).
 */
export function attentionForward(
  out: Tensor, // (B, Tq, H, D)
  lse: Tensor, // (B, H, Tq)
  q: Tensor, // (B, Tq, H, D)
  k: Tensor, // (B, Tk, Hkv, D)
  v: Tensor, // (B, Tk, Hkv, D)
  opts: AttentionOptions = {},
): void {
  const op = 'attentionForward';
  const d = attentionDims(op, q, k, v, opts);
  expectShape(out, [d.B, d.Tq, d.H, d.D], `${op}: out`);
  expectShape(lse, [d.B, d.H, d.Tq], `${op}: lse`);
  expectDtype(out, 'f32', `${op}: out`);
  expectDtype(lse, 'f32', `${op}: lse`);
  nativeFn<ForwardFn>('attentionForward')(
    out.f32, lse.f32, q.f32, k.f32, v.f32, d.B, d.Tq, d.Tk, d.H, d.Hkv, d.D, d.window, d.qOffset,
  );
}

/**
 * Gradients of attentionForward. ACCUMULATES (+=) into dq, dk and dv. `out` and `lse` are
 * those the forward produced for the same q, k, v and options.
 */
export function attentionBackward(
  dq: Tensor, // (B, Tq, H, D)
  dk: Tensor, // (B, Tk, Hkv, D)
  dv: Tensor, // (B, Tk, Hkv, D)
  dout: Tensor, // (B, Tq, H, D)
  q: Tensor, // (B, Tq, H, D)
  k: Tensor, // (B, Tk, Hkv, D)
  v: Tensor, // (B, Tk, Hkv, D)
  out: Tensor, // (B, Tq, H, D)
  lse: Tensor, // (B, H, Tq)
  opts: AttentionOptions = {},
): void {
  const op = 'attentionBackward';
  const d = attentionDims(op, q, k, v, opts);
  const qShape = [d.B, d.Tq, d.H, d.D];
  const kShape = [d.B, d.Tk, d.Hkv, d.D];
  for (const [t, name, shape] of [
    [dq, 'dq', qShape], [dk, 'dk', kShape], [dv, 'dv', kShape], [dout, 'dout', qShape], [out, 'out', qShape],
    [lse, 'lse', [d.B, d.H, d.Tq]],
  ] as const) {
    expectShape(t, shape, `${op}: ${name}`);
    expectDtype(t, 'f32', `${op}: ${name}`);
  }
  nativeFn<BackwardFn>('attentionBackward')(
    dq.f32, dk.f32, dv.f32, dout.f32, q.f32, k.f32, v.f32, out.f32, lse.f32,
    d.B, d.Tq, d.Tk, d.H, d.Hkv, d.D, d.window, d.qOffset,
  );
}
