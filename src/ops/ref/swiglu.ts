// Reference twin of src/ops/swiglu.ts (slow, obvious): silu(g) * u with the exponential in f64,
// rounded to f32 where torch's F.silu(gate) * up rounds; the backward pass in f64.
import type { Tensor } from '../../engine/tensor.js';
import { swigluCheck } from '../swiglu.js';

const f = Math.fround;

export function swigluForwardRef(
  out: Tensor, // (N, F)
  gate: Tensor, // (N, F)
  up: Tensor, // (N, F)
): void {
  const n = swigluCheck('swigluForwardRef', gate, [[out, 'out'], [up, 'up']]);
  const g = gate.f32, u = up.f32, o = out.f32;
  for (let i = 0; i < n; i++) {
    const silu = f(g[i]! / f(1 + f(Math.exp(-g[i]!))));
    o[i] = f(silu * u[i]!);
  }
}

export function swigluBackwardRef(
  dgate: Tensor, // (N, F) +=
  dup: Tensor, // (N, F) +=
  dout: Tensor, // (N, F)
  gate: Tensor, // (N, F)
  up: Tensor, // (N, F)
): void {
  const n = swigluCheck('swigluBackwardRef', gate, [[dgate, 'dgate'], [dup, 'dup'], [dout, 'dout'], [up, 'up']]);
  const g = gate.f32, u = up.f32, d = dout.f32, dg = dgate.f32, du = dup.f32;
  for (let i = 0; i < n; i++) {
    const s = 1 / (1 + Math.exp(-g[i]!)); // sigmoid
    // d silu / dg = s + g * s * (1 - s)
    dg[i] = f(dg[i]! + d[i]! * u[i]! * (s + g[i]! * s * (1 - s)));
    du[i] = f(du[i]! + d[i]! * g[i]! * s);
  }
}
