// RoPE tables: the inverse frequencies and the per-position cos/sin tables that ropeForward
// (src/ops/rope.ts) consumes, computed exactly as transformers does in float32.
//
// transformers (modeling_rope_utils + LlamaRotaryEmbedding) computes, all in f32 tensors:
//   inv_freq = 1.0 / (theta ** (arange(0, D, 2).float() / D))
//   freqs    = inv_freq * position.float();   cos = cos(freqs), sin = sin(freqs)
// Every tensor op rounds to f32, so each step here is wrapped in Math.fround (f64 arithmetic
// followed by rounding equals the f32 operation for + - * / sqrt). `x / tensor` in torch is
// reciprocal(tensor) * x, which the llama3 code path relies on; that is mirrored too. The
// remaining differences are torch's vectorised pow/cos/sin (about 1 ulp) versus f64 Math.*.
//
// Scaling: 'linear' divides inv_freq by factor (positions / factor); 'llama3' applies
// transformers' _compute_llama3_parameters: with wavelen = 2*pi / inv_freq, wavelengths below
// original_max_pos / high_freq_factor keep their frequency, those above
// original_max_pos / low_freq_factor are divided by factor, and those in between are
// interpolated with smooth = (original_max_pos / wavelen - low) / (high - low):
//   (1 - smooth) * inv_freq / factor + smooth * inv_freq.
// The attention scaling factor of these three types is 1, so cos/sin are not rescaled.
import { Tensor } from '../engine/tensor.js';
import type { ModelConfig, RopeScaling } from './config.js';

const f = Math.fround;

function positiveFinite(op: string, name: string, v: number): void {
  if (!Number.isFinite(v) || v <= 0) throw new RangeError(`${op}: ${name} must be a finite number > 0, got ${v}`);
}

/** Inverse frequencies (D/2) of the rotary embedding, float32, with the scaling applied. */
export function ropeInvFreq(headDim: number, theta: number, scaling: RopeScaling): Float32Array {
  const op = 'ropeInvFreq';
  if (!Number.isInteger(headDim) || headDim < 2 || headDim % 2 !== 0) {
    throw new RangeError(`${op}: headDim must be an even integer >= 2, got ${headDim}`);
  }
  positiveFinite(op, 'theta', theta);
  const half = headDim / 2;
  const base = f(theta);
  const inv = new Float32Array(half);
  for (let i = 0; i < half; i++) {
    const exponent = f((2 * i) / headDim);
    inv[i] = f(1 / f(Math.pow(base, exponent)));
  }
  switch (scaling.type) {
    case 'default':
      return inv;
    case 'linear': {
      positiveFinite(op, 'scaling.factor', scaling.factor);
      const factor = f(scaling.factor);
      for (let i = 0; i < half; i++) inv[i] = f(inv[i]! / factor);
      return inv;
    }
    case 'llama3':
      return llama3Scale(inv, scaling);
  }
}

function llama3Scale(inv: Float32Array, s: Extract<RopeScaling, { type: 'llama3' }>): Float32Array {
  const op = 'ropeInvFreq';
  positiveFinite(op, 'scaling.factor', s.factor);
  positiveFinite(op, 'scaling.lowFreqFactor', s.lowFreqFactor);
  positiveFinite(op, 'scaling.highFreqFactor', s.highFreqFactor);
  positiveFinite(op, 'scaling.originalMaxPositionEmbeddings', s.originalMaxPositionEmbeddings);
  if (!(s.highFreqFactor > s.lowFreqFactor)) {
    throw new RangeError(`${op}: scaling.highFreqFactor (${s.highFreqFactor}) must exceed lowFreqFactor (${s.lowFreqFactor})`);
  }
  // Python scalars meeting f32 tensors are rounded to f32 inside each op.
  const factor = f(s.factor);
  const oldContext = f(s.originalMaxPositionEmbeddings);
  const lowFreqWavelen = f(s.originalMaxPositionEmbeddings / s.lowFreqFactor);
  const highFreqWavelen = f(s.originalMaxPositionEmbeddings / s.highFreqFactor);
  const low = f(s.lowFreqFactor);
  const span = f(s.highFreqFactor - s.lowFreqFactor);
  const twoPi = f(2 * Math.PI);
  const out = new Float32Array(inv.length);
  for (let i = 0; i < inv.length; i++) {
    const freq = inv[i]!;
    const wavelen = f(f(1 / freq) * twoPi); // 2*pi / inv_freq
    const scaled = wavelen > lowFreqWavelen ? f(freq / factor) : freq;
    const medium = !(wavelen < highFreqWavelen) && !(wavelen > lowFreqWavelen);
    if (!medium) {
      out[i] = scaled;
      continue;
    }
    const smooth = f(f(f(f(1 / wavelen) * oldContext) - low) / span);
    const lowPart = f(f(f(1 - smooth) * scaled) / factor);
    out[i] = f(lowPart + f(smooth * scaled));
  }
  return out;
}

/** cos/sin tables (count, D/2) for positions [start, start + count), float32 as transformers. */
export function ropeTables(
  cfg: Pick<ModelConfig, 'headDim' | 'ropeTheta' | 'ropeScaling'>,
  start: number,
  count: number,
): { cos: Tensor; sin: Tensor } {
  const op = 'ropeTables';
  if (!Number.isInteger(start) || start < 0) throw new RangeError(`${op}: start must be an integer >= 0, got ${start}`);
  if (!Number.isInteger(count) || count < 0) throw new RangeError(`${op}: count must be an integer >= 0, got ${count}`);
  if (start + count > 2 ** 24) {
    throw new RangeError(`${op}: positions up to ${start + count} are not exact in float32 (limit 2^24)`);
  }
  const inv = ropeInvFreq(cfg.headDim, cfg.ropeTheta, cfg.ropeScaling);
  const half = inv.length;
  const cos = Tensor.zeros([count, half]); // (T, D/2)
  const sin = Tensor.zeros([count, half]); // (T, D/2)
  const cs = cos.f32, sn = sin.f32;
  for (let t = 0; t < count; t++) {
    const pos = start + t;
    for (let i = 0; i < half; i++) {
      const angle = f(pos * inv[i]!);
      cs[t * half + i] = Math.cos(angle);
      sn[t * half + i] = Math.sin(angle);
    }
  }
  return { cos, sin };
}
