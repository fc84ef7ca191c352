// SwiGLU, the gated activation of the Llama MLP: out = silu(gate) * up, silu(g) = g / (1 + exp(-g)).
// Typed wrapper over native/cpu/swiglu.cc (elementwise; rows = leading dimensions, so (N, F)
// and (B, T, F) both work). Twin: src/ops/ref/swiglu.ts.
import { nativeFn } from '../engine/native.js';
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';

type ForwardFn = (out: Float32Array, gate: Float32Array, up: Float32Array, n: number) => void;
type BackwardFn = (
  dgate: Float32Array,
  dup: Float32Array,
  dout: Float32Array,
  gate: Float32Array,
  up: Float32Array,
  n: number,
) => void;

/** Checks that every tensor is f32 with gate's shape (rank >= 2); returns the element count. */
export function swigluCheck(op: string, gate: Tensor, named: ReadonlyArray<readonly [Tensor, string]>): number {
  expectDtype(gate, 'f32', `${op}: gate`);
  if (gate.rank < 2) throw new RangeError(`${op}: gate must have rank >= 2 (N, F), got shape [${gate.shape.join(', ')}]`);
  for (const [t, name] of named) {
    expectDtype(t, 'f32', `${op}: ${name}`);
    expectShape(t, gate.shape, `${op}: ${name}`);
  }
  return gate.size;
}

export function swigluForward(
  out: Tensor, // (N, F)
  gate: Tensor, // (N, F)
  up: Tensor, // (N, F)
): void {
  const op = 'swigluForward';
  const n = swigluCheck(op, gate, [[out, 'out'], [up, 'up']]);
  nativeFn<ForwardFn>('swigluForward')(out.f32, gate.f32, up.f32, n);
}

/** Accumulates (+=) dgate = dout * up * silu'(gate) and dup = dout * silu(gate). */
export function swigluBackward(
  dgate: Tensor, // (N, F) +=
  dup: Tensor, // (N, F) +=
  dout: Tensor, // (N, F)
  gate: Tensor, // (N, F)
  up: Tensor, // (N, F)
): void {
  const op = 'swigluBackward';
  const n = swigluCheck(op, gate, [[dgate, 'dgate'], [dup, 'dup'], [dout, 'dout'], [up, 'up']]);
  nativeFn<BackwardFn>('swigluBackward')(dgate.f32, dup.f32, dout.f32, gate.f32, up.f32, n);
}
