// Quantization math of eqat, in one place: uniform asymmetric group quantization of a weight
// matrix, its min-max initialisation, and the fake-quant op (forward and straight-through
// backward) that Block-AP and E2E-QP train through. This file is the plain TypeScript reference;
// the fast path is src/quant/fakequant.ts (native/cpu/fakequant.cc), tested against it.
//
// Layout. A weight W is (O, I) row-major (out_features, in_features). Groups are G consecutive
// elements along the input dimension: W[o, i] belongs to group o*(I/G) + floor(i/G), so scale
// and zero are (O, I/G) and, because G divides I, group g is the contiguous run
// W.flat[g*G .. g*G + G). qmax = 2^bits - 1.
//
// Semantics follow the reference EfficientQAT quantizer, with every operation in f32
// (Math.fround) and round-half-to-even rounding (torch.round):
//   s_c = clamp(s, 1e-4, 1e4)            z_r = clamp(round(z), 0, qmax)
//   q   = clamp(round(W / s_c) + z_r, 0, qmax)
//   Ŵ   = (q - z_r) * s_c
// Training treats the clamps on s and z and both roundings as straight-through; the clamp on
// q is a real clamp. With u = W / s_c and inRange = 0 <= round(u) + z_r <= qmax:
//   dW = inRange ? dŴ : 0
//   ds = Σ_group (inRange ? dŴ * (round(u) - u) : dŴ * (q - z_r))
//   dz = Σ_group (inRange ? 0 : -dŴ * s_c)
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';
import { f16ToF32Ref, fromF32, toF32 } from '../engine/dtype.js';

const fround = Math.fround;

/** Lower clamp of the scale (as an f32). */
export const SCALE_MIN = fround(1e-4);
/** Upper clamp of the scale (as an f32). */
export const SCALE_MAX = fround(1e4);
/** Bound on |xmin / s| used when min-max initialisation derives the zero point. */
export const ZERO_INIT_LIMIT = fround(1e4);

/** Throws unless bits is an integer in [2, 8]; `what` names the caller. */
export function checkBits(bits: number, what: string): void {
  if (!Number.isInteger(bits) || bits < 2 || bits > 8) {
    throw new RangeError(`${what}: bits must be an integer in [2, 8], got ${bits}`);
  }
}

/** Largest quantized code for `bits` bits: 2^bits - 1. */
export function qmax(bits: number): number {
  checkBits(bits, 'qmax');
  return 2 ** bits - 1;
}

/** Rounds to the nearest integer, ties to even (as torch.round and C's nearbyint). */
export function roundHalfEven(x: number): number {
  const r = Math.round(x); // ties toward +infinity
  if (r - x === 0.5 && r % 2 !== 0) return r - 1;
  return r;
}

/** x clamped to [lo, hi] (returns x itself when inside, NaN passes through). */
function clamp(x: number, lo: number, hi: number): number {
  return x < lo ? lo : x > hi ? hi : x;
}

/** The clamped scale s_c used by every quantization formula. */
export function clampScale(s: number): number {
  return clamp(fround(s), SCALE_MIN, SCALE_MAX);
}

/** The integer zero point z_r = clamp(round(z), 0, qmax) used by every quantization formula. */
export function roundZero(z: number, qm: number): number {
  return clamp(roundHalfEven(fround(z)), 0, qm);
}

/**
 * Throws a RangeError naming `what` unless O and I are positive integers and the group size G
 * is a positive integer that divides I (G = I is per-channel quantization).
 */
export function checkGroupLayout(O: number, I: number, G: number, what: string): void {
  if (!Number.isInteger(O) || O < 1) throw new RangeError(`${what}: out_features O must be a positive integer, got ${O}`);
  if (!Number.isInteger(I) || I < 1) throw new RangeError(`${what}: in_features I must be a positive integer, got ${I}`);
  if (!Number.isInteger(G) || G < 1) throw new RangeError(`${what}: group size G must be a positive integer, got ${G}`);
  if (I % G !== 0) {
    throw new RangeError(`${what}: group size G = ${G} does not divide in_features I = ${I} (groups run along the input dimension)`);
  }
}

function checkLength(a: ArrayLike<number>, n: number, what: string, name: string, shape: string): void {
  if (a.length !== n) throw new RangeError(`${what}: ${name} has ${a.length} elements, expected ${n} ${shape}`);
}

/**
 * Min-max initialisation of scale and zero for each group of w (O, I):
 *   s = clamp((xmax - xmin) / qmax, 1e-4, 1e4),  z = round(-clamp(xmin / s, -1e4, 1e4)).
 * The zero point stays a float parameter (training moves it continuously). Returns (O, I/G)
 * arrays.
 */
export function minMaxInit(
  w: Float32Array, // (O, I)
  O: number,
  I: number,
  bits: number,
  G: number,
): { scale: Float32Array; zero: Float32Array } {
  const what = 'minMaxInit';
  checkBits(bits, what);
  checkGroupLayout(O, I, G, what);
  checkLength(w, O * I, what, 'w', `(O=${O}, I=${I})`);
  const qm = qmax(bits);
  const groups = (O * I) / G;
  const scale = new Float32Array(groups); // (O, I/G)
  const zero = new Float32Array(groups); // (O, I/G)
  for (let g = 0; g < groups; g++) {
    let xmin = Infinity;
    let xmax = -Infinity;
    for (let e = g * G; e < (g + 1) * G; e++) {
      const x = w[e]!;
      if (x < xmin) xmin = x;
      if (x > xmax) xmax = x;
    }
    const s = clamp(fround(fround(xmax - xmin) / qm), SCALE_MIN, SCALE_MAX);
    const ratio = clamp(fround(xmin / s), -ZERO_INIT_LIMIT, ZERO_INIT_LIMIT);
    scale[g] = s;
    zero[g] = roundHalfEven(-ratio) + 0; // + 0 turns a -0 into +0
  }
  return { scale, zero };
}

/** Integer codes q = clamp(round(w / s_c) + z_r, 0, qmax) of w (O, I), one byte each. */
export function quantize(
  w: Float32Array, // (O, I)
  scale: Float32Array, // (O, I/G)
  zero: Float32Array, // (O, I/G)
  O: number,
  I: number,
  bits: number,
  G: number,
): Uint8Array {
  const what = 'quantize';
  checkBits(bits, what);
  checkGroupLayout(O, I, G, what);
  const groups = (O * I) / G;
  checkLength(w, O * I, what, 'w', `(O=${O}, I=${I})`);
  checkLength(scale, groups, what, 'scale', `(O=${O}, I/G=${I / G})`);
  checkLength(zero, groups, what, 'zero', `(O=${O}, I/G=${I / G})`);
  const qm = qmax(bits);
  const q = new Uint8Array(O * I); // (O, I)
  for (let g = 0; g < groups; g++) {
    const s = clampScale(scale[g]!);
    const zr = roundZero(zero[g]!, qm);
    for (let e = g * G; e < (g + 1) * G; e++) {
      q[e] = clamp(fround(roundHalfEven(fround(w[e]! / s)) + zr), 0, qm);
    }
  }
  return q;
}

/** Dequantized weights (q - z_r) * s_c of codes q (O, I); writes into `out` when given. */
export function dequantize(
  q: Uint8Array, // (O, I)
  scale: Float32Array, // (O, I/G)
  zero: Float32Array, // (O, I/G)
  O: number,
  I: number,
  bits: number,
  G: number,
  out: Float32Array = new Float32Array(O * I), // (O, I)
): Float32Array {
  const what = 'dequantize';
  checkBits(bits, what);
  checkGroupLayout(O, I, G, what);
  const groups = (O * I) / G;
  checkLength(q, O * I, what, 'q', `(O=${O}, I=${I})`);
  checkLength(scale, groups, what, 'scale', `(O=${O}, I/G=${I / G})`);
  checkLength(zero, groups, what, 'zero', `(O=${O}, I/G=${I / G})`);
  checkLength(out, O * I, what, 'out', `(O=${O}, I=${I})`);
  const qm = qmax(bits);
  for (let g = 0; g < groups; g++) {
    const s = clampScale(scale[g]!);
    const zr = roundZero(zero[g]!, qm);
    for (let e = g * G; e < (g + 1) * G; e++) {
      const code = q[e]!;
      if (code > qm) throw new RangeError(`${what}: q[${e}] = ${code} exceeds qmax = ${qm} for ${bits} bits`);
      out[e] = fround((code - zr) * s);
    }
  }
  return out;
}

/**
 * Checks the tensors of a fake-quant call and returns the dimensions: w is (O, I) f32 and
 * scale/zero are (O, I/G) f32. `tensors` lists the extra (O, I) and (O, I/G) tensors by name.
 */
export function fakeQuantDims(
  op: string,
  w: Tensor,
  scale: Tensor,
  zero: Tensor,
  bits: number,
  G: number,
  weightShaped: Record<string, Tensor>,
  groupShaped: Record<string, Tensor> = {},
): { O: number; I: number; groups: number; qm: number } {
  checkBits(bits, op);
  expectDtype(w, 'f32', `${op}: w`);
  if (w.rank !== 2) throw new RangeError(`${op}: w must be (O, I), got shape [${w.shape.join(', ')}]`);
  const O = w.dim(0);
  const I = w.dim(1);
  checkGroupLayout(O, I, G, op);
  const groupShape = [O, I / G];
  for (const [name, t] of Object.entries({ scale, zero, ...groupShaped })) {
    expectDtype(t, 'f32', `${op}: ${name}`);
    expectShape(t, groupShape, `${op}: ${name} (O, I/G)`);
  }
  for (const [name, t] of Object.entries(weightShaped)) {
    expectDtype(t, 'f32', `${op}: ${name}`);
    expectShape(t, [O, I], `${op}: ${name} (O, I)`);
  }
  return { O, I, groups: (O * I) / G, qm: qmax(bits) };
}

/** Fake quantization Ŵ = dequantize(quantize(w)) of w (O, I) into out (O, I). Reference twin. */
export function fakeQuantForwardRef(
  out: Tensor, // (O, I)
  w: Tensor, // (O, I)
  scale: Tensor, // (O, I/G)
  zero: Tensor, // (O, I/G)
  bits: number,
  G: number,
): void {
  const { groups, qm } = fakeQuantDims('fakeQuantForwardRef', w, scale, zero, bits, G, { out });
  const o = out.f32;
  const x = w.f32;
  const sv = scale.f32;
  const zv = zero.f32;
  for (let g = 0; g < groups; g++) {
    const s = clampScale(sv[g]!);
    const zr = roundZero(zv[g]!, qm);
    for (let e = g * G; e < (g + 1) * G; e++) {
      const q = clamp(fround(roundHalfEven(fround(x[e]! / s)) + zr), 0, qm);
      o[e] = fround((q - zr) * s);
    }
  }
}

/**
 * Straight-through backward of fake quantization: accumulates (+=) into dw (O, I), dscale and
 * dzero (O, I/G) given dout = dL/dŴ (O, I). Reference twin; group sums run in f32, in order.
 */
export function fakeQuantBackwardRef(
  dw: Tensor, // (O, I) +=
  dscale: Tensor, // (O, I/G) +=
  dzero: Tensor, // (O, I/G) +=
  dout: Tensor, // (O, I)
  w: Tensor, // (O, I)
  scale: Tensor, // (O, I/G)
  zero: Tensor, // (O, I/G)
  bits: number,
  G: number,
): void {
  const { groups, qm } = fakeQuantDims('fakeQuantBackwardRef', w, scale, zero, bits, G, { dw, dout }, { dscale, dzero });
  const gw = dw.f32;
  const gs = dscale.f32;
  const gz = dzero.f32;
  const go = dout.f32;
  const x = w.f32;
  const sv = scale.f32;
  const zv = zero.f32;
  for (let g = 0; g < groups; g++) {
    const s = clampScale(sv[g]!);
    const zr = roundZero(zv[g]!, qm);
    let ds = 0;
    let dz = 0;
    for (let e = g * G; e < (g + 1) * G; e++) {
      const grad = go[e]!;
      const u = fround(x[e]! / s);
      const r = roundHalfEven(u);
      const code = fround(r + zr);
      if (code >= 0 && code <= qm) {
        gw[e] = fround(gw[e]! + grad);
        ds = fround(ds + fround(grad * fround(r - u)));
      } else {
        gw[e] = fround(gw[e]! + 0);
        const q = code < 0 ? 0 : qm;
        ds = fround(ds + fround(grad * (q - zr)));
        dz = fround(dz - fround(grad * s));
      }
    }
    gs[g] = fround(gs[g]! + ds);
    gz[g] = fround(gz[g]! + dz);
  }
}

/**
 * Step sizes as a checkpoint stores them: f16, the nearest f16 to the clamped value, moved
 * inward when rounding left the clamp range, so dequantizing the stored scale never re-clamps
 * it. Returns the f16 bits and their f32 values (what training continues with / evaluates).
 */
export function scalesToF16(scale: Float32Array): { f16: Uint16Array; f32: Float32Array } {
  const clamped = new Float32Array(scale.length);
  for (let j = 0; j < scale.length; j++) clamped[j] = clampScale(scale[j]!);
  const f16 = fromF32('f16', clamped);
  const f32 = toF32('f16', f16);
  for (let j = 0; j < f32.length; j++) {
    while (f32[j]! < SCALE_MIN) f32[j] = f16ToF32Ref((f16[j] = f16[j]! + 1));
    while (f32[j]! > SCALE_MAX) f32[j] = f16ToF32Ref((f16[j] = f16[j]! - 1));
  }
  return { f16, f32 };
}

/** Integer zero points z_r = clamp(round(z), 0, qmax) as stored. */
export function zerosToInt(zero: Float32Array, bits: number): Uint8Array {
  const qm = qmax(bits);
  const out = new Uint8Array(zero.length);
  for (let j = 0; j < zero.length; j++) out[j] = roundZero(zero[j]!, qm);
  return out;
}
