// Rotary position embedding in the Hugging Face rotate_half layout (the two halves of each
// head form the rotated pairs; not the interleaved layout): for i < D/2,
//   out[i] = x[i] cos[t,i] - x[i+D/2] sin[t,i],   out[i+D/2] = x[i+D/2] cos[t,i] + x[i] sin[t,i].
// Typed wrapper over native/cpu/rope.cc. cos/sin come from ropeTables() in src/model/rope.ts
// for the positions of the T tokens. Twin: src/ops/ref/rope.ts.
import { nativeFn } from '../engine/native.js';
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';

type RopeFn = (
  dst: Float32Array,
  src: Float32Array,
  cos: Float32Array,
  sin: Float32Array,
  B: number,
  T: number,
  H: number,
  D: number,
) => void;

export interface RopeDims {
  B: number;
  T: number;
  H: number;
  D: number;
}

/** Checks a (B, T, H, D) pair of tensors and the (T, D/2) tables; returns the dimensions. */
export function ropeCheck(
  op: string,
  dst: Tensor, // (B, T, H, D)
  dstName: string,
  src: Tensor, // (B, T, H, D)
  srcName: string,
  cos: Tensor, // (T, D/2)
  sin: Tensor, // (T, D/2)
): RopeDims {
  for (const [t, name] of [[dst, dstName], [src, srcName], [cos, 'cos'], [sin, 'sin']] as const) {
    expectDtype(t, 'f32', `${op}: ${name}`);
  }
  if (src.rank !== 4) throw new RangeError(`${op}: ${srcName} must be (B, T, H, D), got shape [${src.shape.join(', ')}]`);
  const [B, T, H, D] = src.shape as [number, number, number, number];
  if (D < 2 || D % 2 !== 0) throw new RangeError(`${op}: ${srcName}: head dim D must be even and >= 2, got ${D}`);
  expectShape(dst, src.shape, `${op}: ${dstName}`);
  expectShape(cos, [T, D / 2], `${op}: cos`);
  expectShape(sin, [T, D / 2], `${op}: sin`);
  return { B, T, H, D };
}

/** Rotates x by the per-position angles; out may be x itself (in place). */
export function ropeForward(
  out: Tensor, // (B, T, H, D)
  x: Tensor, // (B, T, H, D)
  cos: Tensor, // (T, D/2)
  sin: Tensor, // (T, D/2)
): void {
  const op = 'ropeForward';
  const { B, T, H, D } = ropeCheck(op, out, 'out', x, 'x', cos, sin);
  nativeFn<RopeFn>('ropeForward')(out.f32, x.f32, cos.f32, sin.f32, B, T, H, D);
}

/** Accumulates (+=) into dx the inverse rotation of dout (the gradient of ropeForward). */
export function ropeBackward(
  dx: Tensor, // (B, T, H, D) +=
  dout: Tensor, // (B, T, H, D)
  cos: Tensor, // (T, D/2)
  sin: Tensor, // (T, D/2)
): void {
  const op = 'ropeBackward';
  if (dx.data === dout.data) throw new RangeError(`${op}: dx and dout must not share storage`);
  const { B, T, H, D } = ropeCheck(op, dx, 'dx', dout, 'dout', cos, sin);
  nativeFn<RopeFn>('ropeBackward')(dx.f32, dout.f32, cos.f32, sin.f32, B, T, H, D);
}
