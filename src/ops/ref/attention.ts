// TypeScript twin of src/ops/attention.ts: causal grouped-query attention computed the obvious
// way, one query row at a time with its full score row materialised, in double precision.
// Slow; used by the tests as the reference for the native flash-style kernel.
import type { Tensor } from '../../engine/tensor.js';
import { attentionDims, type AttentionDims, type AttentionOptions } from '../attention.js';

/** Visible keys of query row t: [first, last] inclusive. */
function keyRange(d: AttentionDims, t: number): [number, number] {
  const pos = d.qOffset + t;
  const first = d.window === 0 ? 0 : Math.max(0, pos - d.window + 1);
  return [first, pos];
}

/** Scaled scores q_t · k_j / sqrt(D) for the visible keys of row t (index j - first). */
function scores(d: AttentionDims, q: Float32Array, k: Float32Array, b: number, t: number, h: number, g: number): number[] {
  const [first, last] = keyRange(d, t);
  const scale = 1 / Math.sqrt(d.D);
  const qo = ((b * d.Tq + t) * d.H + h) * d.D;
  const s: number[] = [];
  for (let j = first; j <= last; j++) {
    const ko = ((b * d.Tk + j) * d.Hkv + g) * d.D;
    let dotp = 0;
    for (let x = 0; x < d.D; x++) dotp += q[qo + x]! * k[ko + x]!;
    s.push(dotp * scale);
  }
  return s;
}

export function attentionForwardRef(
  out: Tensor, // (B, Tq, H, D)
  lse: Tensor, // (B, H, Tq)
  q: Tensor, // (B, Tq, H, D)
  k: Tensor, // (B, Tk, Hkv, D)
  v: Tensor, // (B, Tk, Hkv, D)
  opts: AttentionOptions = {},
): void {
  const d = attentionDims('attentionForwardRef', q, k, v, opts);
  const [Q, K, V, O, L] = [q.f32, k.f32, v.f32, out.f32, lse.f32];
  const group = d.H / d.Hkv;
  for (let b = 0; b < d.B; b++) {
    for (let h = 0; h < d.H; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < d.Tq; t++) {
        const s = scores(d, Q, K, b, t, h, g);
        const m = Math.max(...s);
        const e = s.map((x) => Math.exp(x - m));
        const sum = e.reduce((a, x) => a + x, 0);
        const [first] = keyRange(d, t);
        const oo = ((b * d.Tq + t) * d.H + h) * d.D;
        for (let x = 0; x < d.D; x++) {
          let acc = 0;
          for (let jj = 0; jj < e.length; jj++) acc += e[jj]! * V[((b * d.Tk + first + jj) * d.Hkv + g) * d.D + x]!;
          O[oo + x] = acc / sum;
        }
        L[(b * d.H + h) * d.Tq + t] = m + Math.log(sum);
      }
    }
  }
}

/** Accumulates (+=) into dq, dk, dv, like attentionBackward. */
export function attentionBackwardRef(
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
  const d = attentionDims('attentionBackwardRef', q, k, v, opts);
  const [Q, K, V, O, L, dO] = [q.f32, k.f32, v.f32, out.f32, lse.f32, dout.f32];
  const [dQ, dK, dV] = [dq.f32, dk.f32, dv.f32];
  const group = d.H / d.Hkv;
  const scale = 1 / Math.sqrt(d.D);
  for (let b = 0; b < d.B; b++) {
    for (let h = 0; h < d.H; h++) {
      const g = Math.floor(h / group);
      for (let t = 0; t < d.Tq; t++) {
        const s = scores(d, Q, K, b, t, h, g);
        const [first] = keyRange(d, t);
        const qo = ((b * d.Tq + t) * d.H + h) * d.D;
        const lseT = L[(b * d.H + h) * d.Tq + t]!;
        let delta = 0;
        for (let x = 0; x < d.D; x++) delta += dO[qo + x]! * O[qo + x]!;
        for (let jj = 0; jj < s.length; jj++) {
          const ko = ((b * d.Tk + first + jj) * d.Hkv + g) * d.D;
          const p = Math.exp(s[jj]! - lseT);
          let dP = 0;
          for (let x = 0; x < d.D; x++) dP += dO[qo + x]! * V[ko + x]!;
          const dS = p * (dP - delta);
          for (let x = 0; x < d.D; x++) {
            dQ[qo + x] += scale * dS * K[ko + x]!;
            dK[ko + x] += scale * dS * Q[qo + x]!;
            dV[ko + x] += p * dO[qo + x]!;
          }
        }
      }
    }
  }
}
