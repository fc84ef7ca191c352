// Softmax cross-entropy over the last dimension (the vocabulary): the training loss of
// end-to-end QAT and the per-token loss behind perplexity. Equivalent to
// torch.nn.functional.cross_entropy(logits, targets, reduction='none', ignore_index=-100).
//
// Rows are all leading dimensions of the logits flattened: logits (..., V) has N rows, and
// losses and targets hold N elements each (any shape). A target of -100 marks an ignored row
// (loss 0, zero gradient); any other target outside [0, V) throws a RangeError naming the row,
// before anything is written. Native kernel: native/cpu/crossentropy.cc (threads over rows,
// max-subtracted, f64 sum of exponentials). crossEntropyForwardBackward computes the loss and
// the gradient together, reading the logits twice instead of three times.
// Twin: src/ops/ref/crossentropy.ts.
import { nativeFn } from '../engine/native.js';
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';

/** The target value that marks a row as ignored (torch's default ignore_index). */
export const IGNORE_INDEX = -100;

type ForwardFn = (losses: Float32Array, logits: Float32Array, targets: Int32Array, N: number, V: number) => void;
type BackwardFn = (
  dlogits: Float32Array,
  logits: Float32Array,
  targets: Int32Array,
  N: number,
  V: number,
  scale: number,
) => void;

type FusedFn = (
  losses: Float32Array,
  dlogits: Float32Array,
  logits: Float32Array,
  targets: Int32Array,
  N: number,
  V: number,
  scale: number,
) => void;

/** dlogits may be exactly logits or disjoint from it, not a shifted view of the same storage. */
function expectNoPartialOverlap(op: string, dlogits: Tensor, logits: Tensor): void {
  const d = dlogits.data;
  const x = logits.data;
  if (d.buffer !== x.buffer || (d.byteOffset === x.byteOffset && d.length === x.length)) return;
  if (d.byteOffset < x.byteOffset + x.byteLength && x.byteOffset < d.byteOffset + d.byteLength) {
    throw new RangeError(`${op}: argument 'dlogits' overlaps 'logits' in part; pass the same tensor or disjoint storage`);
  }
}

/** Checks logits and targets and returns [N, V]. */
function rowsOf(op: string, logitsName: string, logits: Tensor, targets: Tensor): [number, number] {
  expectDtype(logits, 'f32', `${op}: argument '${logitsName}'`);
  expectDtype(targets, 'i32', `${op}: argument 'targets'`);
  if (logits.rank < 2) {
    throw new RangeError(`${op}: argument '${logitsName}' must have shape (N, V) or (..., V), got [${logits.shape.join(', ')}]`);
  }
  const V = logits.dim(-1);
  const N = logits.shape.slice(0, -1).reduce((a, b) => a * b, 1);
  if (targets.size !== N) {
    throw new RangeError(`${op}: argument 'targets' has ${targets.size} elements, expected ${N} (one per row of '${logitsName}')`);
  }
  return [N, V];
}

/** Target-out-of-range message shared by the CPU op's twin, the CUDA wrapper and host-side checks. */
export function crossEntropyTargetError(op: string, row: number, target: number, V: number): RangeError {
  return new RangeError(`${op}: argument 'targets': row ${row} has target ${target}, outside [0, ${V}) and not the ignore index -100`);
}

/**
 * losses[n] = logsumexp(logits[n, :]) - logits[n, targets[n]]  (0 where targets[n] = -100).
 * losses: (N) f32   logits: (N, V) or (..., V) f32   targets: (N) i32
 */
export function crossEntropyForward(losses: Tensor, logits: Tensor, targets: Tensor): void {
  const op = 'crossEntropyForward';
  const [N, V] = rowsOf(op, 'logits', logits, targets);
  expectDtype(losses, 'f32', `${op}: argument 'losses'`);
  if (losses.size !== N) {
    throw new RangeError(`${op}: argument 'losses' has ${losses.size} elements, expected ${N} (one per row of 'logits')`);
  }
  nativeFn<ForwardFn>('crossEntropyForward')(losses.f32, logits.f32, targets.i32, N, V);
}

/**
 * OVERWRITES dlogits with scale * (softmax(logits) - onehot(targets)); rows with target -100
 * become zero. dlogits may be the same tensor as logits (in place, to save memory at large V).
 * dlogits, logits: (N, V) or (..., V) f32, same shape   targets: (N) i32
 */
export function crossEntropyBackward(dlogits: Tensor, logits: Tensor, targets: Tensor, scale: number): void {
  const op = 'crossEntropyBackward';
  const [N, V] = rowsOf(op, 'logits', logits, targets);
  expectDtype(dlogits, 'f32', `${op}: argument 'dlogits'`);
  expectShape(dlogits, logits.shape, `${op}: argument 'dlogits'`);
  if (typeof scale !== 'number') throw new TypeError(`${op}: argument 'scale' must be a number, got ${typeof scale}`);
  expectNoPartialOverlap(op, dlogits, logits);
  nativeFn<BackwardFn>('crossEntropyBackward')(dlogits.f32, logits.f32, targets.i32, N, V, scale);
}

/**
 * crossEntropyForward followed by crossEntropyBackward, with one pass over each row fewer (the
 * row's max and sum of exponentials are computed once): the training step's loss and gradient.
 * Same arguments, results and in-place rule (dlogits may be logits; the losses are computed
 * before the row is overwritten).
 */
export function crossEntropyForwardBackward(losses: Tensor, dlogits: Tensor, logits: Tensor, targets: Tensor, scale: number): void {
  const op = 'crossEntropyForwardBackward';
  const [N, V] = rowsOf(op, 'logits', logits, targets);
  expectDtype(losses, 'f32', `${op}: argument 'losses'`);
  if (losses.size !== N) {
    throw new RangeError(`${op}: argument 'losses' has ${losses.size} elements, expected ${N} (one per row of 'logits')`);
  }
  expectDtype(dlogits, 'f32', `${op}: argument 'dlogits'`);
  expectShape(dlogits, logits.shape, `${op}: argument 'dlogits'`);
  if (typeof scale !== 'number') throw new TypeError(`${op}: argument 'scale' must be a number, got ${typeof scale}`);
  expectNoPartialOverlap(op, dlogits, logits);
  nativeFn<FusedFn>('crossEntropyForwardBackward')(losses.f32, dlogits.f32, logits.f32, targets.i32, N, V, scale);
}
