// The fast fake-quant op of Block-AP / E2E-QP training and the byte quantizer used when a
// block is frozen: typed wrappers over the native kernels in native/cpu/fakequant.cc
// (threaded over groups, AVX-512 / AVX2 / scalar). The math and the reference twins
// (fakeQuantForwardRef, fakeQuantBackwardRef, quantize) live in src/quant/primitives.ts.
// The forward and quantizeNative are bit-exact with the twins; backward group sums agree to
// rounding.
import { nativeFn } from '../engine/native.js';
import type { Tensor } from '../engine/tensor.js';
import { checkBits, checkGroupLayout, fakeQuantDims, qmax } from './primitives.js';

type ForwardFn = (
  out: Float32Array,
  w: Float32Array,
  scale: Float32Array,
  zero: Float32Array,
  groups: number,
  G: number,
  qmax: number,
) => void;
type BackwardFn = (
  dw: Float32Array,
  dscale: Float32Array,
  dzero: Float32Array,
  dout: Float32Array,
  w: Float32Array,
  scale: Float32Array,
  zero: Float32Array,
  groups: number,
  G: number,
  qmax: number,
) => void;
type QuantizeFn = (
  q: Uint8Array,
  w: Float32Array,
  scale: Float32Array,
  zero: Float32Array,
  groups: number,
  G: number,
  qmax: number,
) => void;

/**
 * Fake quantization out = (clamp(round(w / s_c) + z_r, 0, qmax) - z_r) * s_c of w (O, I) with
 * per-group scale and zero (O, I/G); groups are G consecutive inputs. Overwrites out.
 */
export function fakeQuantForward(
  out: Tensor, // (O, I)
  w: Tensor, // (O, I)
  scale: Tensor, // (O, I/G)
  zero: Tensor, // (O, I/G)
  bits: number,
  G: number,
): void {
  const op = 'fakeQuantForward';
  const { groups, qm } = fakeQuantDims(op, w, scale, zero, bits, G, { out });
  nativeFn<ForwardFn>('fakeQuantForwardNative')(out.f32, w.f32, scale.f32, zero.f32, groups, G, qm);
}

/**
 * Straight-through backward of fakeQuantForward given dout = dL/dout (O, I). Accumulates (+=)
 * dw (O, I), dscale (O, I/G) and dzero (O, I/G); see src/quant/primitives.ts for the formulas.
 */
export function fakeQuantBackward(
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
  const op = 'fakeQuantBackward';
  const { groups, qm } = fakeQuantDims(op, w, scale, zero, bits, G, { dw, dout }, { dscale, dzero });
  nativeFn<BackwardFn>('fakeQuantBackwardNative')(
    dw.f32,
    dscale.f32,
    dzero.f32,
    dout.f32,
    w.f32,
    scale.f32,
    zero.f32,
    groups,
    G,
    qm,
  );
}

/**
 * Integer codes q = clamp(round(w / s_c) + z_r, 0, qmax) of w (O, I), written into q (O, I);
 * the same values as primitives.quantize, computed natively (used when freezing a block).
 */
export function quantizeNative(
  q: Uint8Array, // (O, I)
  w: Float32Array, // (O, I)
  scale: Float32Array, // (O, I/G)
  zero: Float32Array, // (O, I/G)
  O: number,
  I: number,
  bits: number,
  G: number,
): void {
  const op = 'quantizeNative';
  checkBits(bits, op);
  checkGroupLayout(O, I, G, op);
  const groups = (O * I) / G;
  const lengths: [string, ArrayLike<number>, number, string][] = [
    ['q', q, O * I, `(O=${O}, I=${I})`],
    ['w', w, O * I, `(O=${O}, I=${I})`],
    ['scale', scale, groups, `(O=${O}, I/G=${I / G})`],
    ['zero', zero, groups, `(O=${O}, I/G=${I / G})`],
  ];
  for (const [name, a, n, shape] of lengths) {
    if (a.length !== n) throw new RangeError(`${op}: ${name} has ${a.length} elements, expected ${n} ${shape}`);
  }
  nativeFn<QuantizeFn>('fakeQuantQuantizeNative')(q, w, scale, zero, groups, G, qmax(bits));
}
