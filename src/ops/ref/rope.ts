// Reference twin of src/ops/rope.ts (slow, obvious): the rotate_half rotation written out
// element by element, each product and sum rounded to f32 as torch's q*cos + rotate_half(q)*sin.
import type { Tensor } from '../../engine/tensor.js';
import { ropeCheck } from '../rope.js';

const f = Math.fround;

export function ropeForwardRef(
  out: Tensor, // (B, T, H, D)
  x: Tensor, // (B, T, H, D)
  cos: Tensor, // (T, D/2)
  sin: Tensor, // (T, D/2)
): void {
  const { B, T, H, D } = ropeCheck('ropeForwardRef', out, 'out', x, 'x', cos, sin);
  const half = D / 2;
  const xs = x.f32, o = out.f32, cs = cos.f32, sn = sin.f32;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const base = ((b * T + t) * H + h) * D;
        for (let i = 0; i < half; i++) {
          const x1 = xs[base + i]!, x2 = xs[base + i + half]!;
          const c = cs[t * half + i]!, s = sn[t * half + i]!;
          o[base + i] = f(f(x1 * c) - f(x2 * s));
          o[base + i + half] = f(f(x2 * c) + f(x1 * s));
        }
      }
    }
  }
}

export function ropeBackwardRef(
  dx: Tensor, // (B, T, H, D) +=
  dout: Tensor, // (B, T, H, D)
  cos: Tensor, // (T, D/2)
  sin: Tensor, // (T, D/2)
): void {
  const { B, T, H, D } = ropeCheck('ropeBackwardRef', dx, 'dx', dout, 'dout', cos, sin);
  const half = D / 2;
  const d = dout.f32, g = dx.f32, cs = cos.f32, sn = sin.f32;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      for (let h = 0; h < H; h++) {
        const base = ((b * T + t) * H + h) * D;
        for (let i = 0; i < half; i++) {
          const d1 = d[base + i]!, d2 = d[base + i + half]!;
          const c = cs[t * half + i]!, s = sn[t * half + i]!;
          g[base + i] = f(g[base + i]! + f(f(d1 * c) + f(d2 * s)));
          g[base + i + half] = f(g[base + i + half]! + f(f(d2 * c) - f(d1 * s)));
        }
      }
    }
  }
}
