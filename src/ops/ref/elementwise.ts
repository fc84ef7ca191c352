// TypeScript twins of the elementwise ops (src/ops/elementwise.ts): plain loops, one element
// at a time. Storing a double into a Float32Array rounds it to f32, and because a sum or product
// of two f32 values rounded through f64 equals the f32 operation's result, these twins give the
// same bits as the native kernels. biasBackwardRef sums each column in f64.
import type { Tensor } from '../../engine/tensor.js';

/** out = a + b */
export function addRef(out: Tensor, a: Tensor, b: Tensor): void {
  const o = out.f32, x = a.f32, y = b.f32;
  for (let i = 0; i < x.length; i++) o[i] = x[i]! + y[i]!;
}

/** dst += alpha * src */
export function accumulateRef(dst: Tensor, src: Tensor, alpha = 1): void {
  const d = dst.f32, s = src.f32, al = Math.fround(alpha);
  for (let i = 0; i < d.length; i++) d[i] = d[i]! + Math.fround(al * s[i]!);
}

/** out = alpha * a */
export function scaleRef(out: Tensor, a: Tensor, alpha: number): void {
  const o = out.f32, x = a.f32, al = Math.fround(alpha);
  for (let i = 0; i < x.length; i++) o[i] = al * x[i]!;
}

/** out = a * b */
export function mulRef(out: Tensor, a: Tensor, b: Tensor): void {
  const o = out.f32, x = a.f32, y = b.f32;
  for (let i = 0; i < x.length; i++) o[i] = x[i]! * y[i]!;
}

/** out[n, c] += bias[c]   out: (..., C)  bias: (C) */
export function addBiasRef(out: Tensor, bias: Tensor): void {
  const o = out.f32, b = bias.f32, C = b.length;
  for (let i = 0; i < o.length; i++) o[i] = o[i]! + b[i % C]!;
}

/** dbias[c] += sum over rows of dout[n, c]   dbias: (C)  dout: (..., C) */
export function biasBackwardRef(dbias: Tensor, dout: Tensor): void {
  const db = dbias.f32, d = dout.f32, C = db.length;
  if (C === 0) return;
  const N = d.length / C;
  for (let c = 0; c < C; c++) {
    let s = 0;
    for (let n = 0; n < N; n++) s += d[n * C + c]!;
    db[c] = db[c]! + s;
  }
}

/** dst = src */
export function copyRef(dst: Tensor, src: Tensor): void {
  dst.f32.set(src.f32);
}

/** t[:] = value */
export function fillRef(t: Tensor, value: number): void {
  t.f32.fill(value);
}
