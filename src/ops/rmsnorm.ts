// RMSNorm (Hugging Face LlamaRMSNorm, in f32): y = weight * (x * rstd), rstd = 1/sqrt(mean(x^2) + eps).
// Typed wrapper over native/cpu/rmsnorm.cc: checks shapes and dtypes, then runs the kernel.
// Rows are all leading dimensions flattened, so x may be (N, C) or (B, T, C); for the Qwen3
// per-head q/k norm pass x viewed as (N*H, D) (or (B, T, H, D)) with a (D) weight.
// Twin: src/ops/ref/rmsnorm.ts.
import { nativeFn } from '../engine/native.js';
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';

type ForwardFn = (
  out: Float32Array,
  rstd: Float32Array,
  x: Float32Array,
  weight: Float32Array,
  rows: number,
  C: number,
  eps: number,
) => void;
type BackwardFn = (
  dx: Float32Array,
  dweight: Float32Array,
  dout: Float32Array,
  x: Float32Array,
  weight: Float32Array,
  rstd: Float32Array,
  rows: number,
  C: number,
) => void;

/** Row count and width of x (rank >= 2, rows = leading dimensions), after checking every argument. */
export function rmsnormCheckForward(
  op: string,
  out: Tensor, // (N, C)
  rstd: Tensor, // (N)
  x: Tensor, // (N, C)
  weight: Tensor, // (C)
  eps: number,
): { rows: number; C: number } {
  for (const [t, name] of [[out, 'out'], [rstd, 'rstd'], [x, 'x'], [weight, 'weight']] as const) {
    expectDtype(t, 'f32', `${op}: ${name}`);
  }
  const { rows, C } = rowsOf(op, x, 'x');
  expectShape(out, x.shape, `${op}: out`);
  expectShape(weight, [C], `${op}: weight`);
  expectRowVector(op, rstd, 'rstd', x);
  if (!Number.isFinite(eps) || eps < 0) throw new RangeError(`${op}: eps must be a finite number >= 0, got ${eps}`);
  return { rows, C };
}

export function rmsnormCheckBackward(
  op: string,
  dx: Tensor, // (N, C)
  dweight: Tensor, // (C)
  dout: Tensor, // (N, C)
  x: Tensor, // (N, C)
  weight: Tensor, // (C)
  rstd: Tensor, // (N)
): { rows: number; C: number } {
  for (const [t, name] of [[dx, 'dx'], [dweight, 'dweight'], [dout, 'dout'], [x, 'x'], [weight, 'weight'], [rstd, 'rstd']] as const) {
    expectDtype(t, 'f32', `${op}: ${name}`);
  }
  const { rows, C } = rowsOf(op, x, 'x');
  expectShape(dx, x.shape, `${op}: dx`);
  expectShape(dout, x.shape, `${op}: dout`);
  expectShape(weight, [C], `${op}: weight`);
  expectShape(dweight, [C], `${op}: dweight`);
  expectRowVector(op, rstd, 'rstd', x);
  return { rows, C };
}

function rowsOf(op: string, x: Tensor, name: string): { rows: number; C: number } {
  if (x.rank < 2) throw new RangeError(`${op}: ${name} must have rank >= 2 (rows, C), got shape [${x.shape.join(', ')}]`);
  const C = x.dim(-1);
  if (C < 1) throw new RangeError(`${op}: ${name} must have a last dimension >= 1, got shape [${x.shape.join(', ')}]`);
  return { rows: x.size / C, C };
}

/** rstd holds one value per row of x: shape (rows) or x's leading dimensions. */
function expectRowVector(op: string, rstd: Tensor, name: string, x: Tensor): void {
  const lead = x.shape.slice(0, -1);
  const rows = x.size / x.dim(-1);
  const flat = rstd.rank === 1 && rstd.dim(0) === rows;
  const same = rstd.rank === lead.length && rstd.shape.every((d, i) => d === lead[i]);
  if (!flat && !same) {
    throw new RangeError(`${op}: ${name}: expected shape [${rows}] or [${lead.join(', ')}], got [${rstd.shape.join(', ')}]`);
  }
}

/** out = weight * x / sqrt(mean(x^2) + eps) per row; rstd receives 1/sqrt(mean(x^2) + eps). */
export function rmsnormForward(
  out: Tensor, // (N, C)
  rstd: Tensor, // (N)
  x: Tensor, // (N, C)
  weight: Tensor, // (C)
  eps: number,
): void {
  const op = 'rmsnormForward';
  const { rows, C } = rmsnormCheckForward(op, out, rstd, x, weight, eps);
  nativeFn<ForwardFn>('rmsnormForward')(out.f32, rstd.f32, x.f32, weight.f32, rows, C, eps);
}

/** Accumulates (+=) the gradients of rmsnormForward into dx and dweight. */
export function rmsnormBackward(
  dx: Tensor, // (N, C) +=
  dweight: Tensor, // (C) +=
  dout: Tensor, // (N, C)
  x: Tensor, // (N, C)
  weight: Tensor, // (C)
  rstd: Tensor, // (N)
): void {
  const op = 'rmsnormBackward';
  const { rows, C } = rmsnormCheckBackward(op, dx, dweight, dout, x, weight, rstd);
  nativeFn<BackwardFn>('rmsnormBackward')(dx.f32, dweight.f32, dout.f32, x.f32, weight.f32, rstd.f32, rows, C);
}
