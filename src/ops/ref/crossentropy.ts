// TypeScript twin of the softmax cross-entropy (src/ops/crossentropy.ts): two plain passes per
// row in f64 (max, then sum of exp(x - max)), the loss as max + log(sum) - x[target], and the
// gradient as scale * (exp(x - max) / sum - onehot).
import type { Tensor } from '../../engine/tensor.js';
import { crossEntropyTargetError, IGNORE_INDEX } from '../crossentropy.js';

function checkTargets(op: string, t: Int32Array, V: number): void {
  for (let r = 0; r < t.length; r++) {
    const v = t[r]!;
    if (v !== IGNORE_INDEX && (v < 0 || v >= V)) {
      throw crossEntropyTargetError(op, r, v, V);
    }
  }
}

/** [max, sum of exp(x - max)] of row r. */
function rowStats(x: Float32Array, r: number, V: number): [number, number] {
  let max = -Infinity;
  for (let i = 0; i < V; i++) max = Math.max(max, x[r * V + i]!);
  let sum = 0;
  for (let i = 0; i < V; i++) sum += Math.exp(x[r * V + i]! - max);
  return [max, sum];
}

export function crossEntropyForwardRef(losses: Tensor, logits: Tensor, targets: Tensor): void {
  const V = logits.dim(-1), x = logits.f32, t = targets.i32, out = losses.f32;
  checkTargets('crossEntropyForward', t, V);
  for (let r = 0; r < t.length; r++) {
    if (t[r] === IGNORE_INDEX) {
      out[r] = 0;
      continue;
    }
    const [max, sum] = rowStats(x, r, V);
    out[r] = max + Math.log(sum) - x[r * V + t[r]!]!;
  }
}

export function crossEntropyForwardBackwardRef(
  losses: Tensor,
  dlogits: Tensor,
  logits: Tensor,
  targets: Tensor,
  scale: number,
): void {
  crossEntropyForwardRef(losses, logits, targets);
  crossEntropyBackwardRef(dlogits, logits, targets, scale);
}

export function crossEntropyBackwardRef(dlogits: Tensor, logits: Tensor, targets: Tensor, scale: number): void {
  const V = logits.dim(-1), x = logits.f32, t = targets.i32, d = dlogits.f32;
  checkTargets('crossEntropyBackward', t, V);
  for (let r = 0; r < t.length; r++) {
    if (t[r] === IGNORE_INDEX) {
      d.fill(0, r * V, (r + 1) * V);
      continue;
    }
    const [max, sum] = rowStats(x, r, V);
    for (let i = 0; i < V; i++) {
      const p = Math.exp(x[r * V + i]! - max) / sum;
      d[r * V + i] = scale * (p - (i === t[r] ? 1 : 0));
    }
  }
}
