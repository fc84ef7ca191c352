// Token embedding lookup: out[n, :] = table[ids[n], :], and its scatter-add backward.
// Typed wrapper over native/cpu/embedding.cc. ids are i32 of any shape (N) or (B, T); out has
// ids' shape plus C. An id outside [0, V) throws a RangeError naming the row and the id
// (checked natively before anything is written). Twin: src/ops/ref/embedding.ts.
import { nativeFn } from '../engine/native.js';
import { expectDtype, expectShape, type Tensor } from '../engine/tensor.js';

type EmbeddingFn = (
  a: Float32Array,
  b: Float32Array | Int32Array,
  c: Float32Array | Int32Array,
  N: number,
  V: number,
  C: number,
) => void;

/** Checks ids (i32, rank >= 1), table (V, C) and rows (ids' shape + C); returns N, V, C. */
export function embeddingCheck(
  op: string,
  rows: Tensor, // (N, C)
  rowsName: string,
  ids: Tensor, // (N) i32
  table: Tensor, // (V, C)
  tableName: string,
): { N: number; V: number; C: number } {
  expectDtype(ids, 'i32', `${op}: ids`);
  expectDtype(rows, 'f32', `${op}: ${rowsName}`);
  expectDtype(table, 'f32', `${op}: ${tableName}`);
  if (ids.rank < 1) throw new RangeError(`${op}: ids must have rank >= 1, got shape [${ids.shape.join(', ')}]`);
  if (table.rank !== 2) throw new RangeError(`${op}: ${tableName} must be (V, C), got shape [${table.shape.join(', ')}]`);
  const [V, C] = table.shape as [number, number];
  expectShape(rows, [...ids.shape, C], `${op}: ${rowsName}`);
  return { N: ids.size, V, C };
}

/** Index-out-of-range message shared by the native kernel and the twin. */
export function embeddingIdError(op: string, row: number, id: number, V: number): RangeError {
  return new RangeError(`${op}: argument 'ids': id ${id} at row ${row} is outside [0, ${V})`);
}

export function embeddingForward(
  out: Tensor, // (N, C)
  ids: Tensor, // (N) i32
  table: Tensor, // (V, C)
): void {
  const op = 'embeddingForward';
  const { N, V, C } = embeddingCheck(op, out, 'out', ids, table, 'table');
  nativeFn<EmbeddingFn>('embeddingForward')(out.f32, ids.i32, table.f32, N, V, C);
}

/** Accumulates (+=) dout's rows into the rows of dtable selected by ids. */
export function embeddingBackward(
  dtable: Tensor, // (V, C) +=
  dout: Tensor, // (N, C)
  ids: Tensor, // (N) i32
): void {
  const op = 'embeddingBackward';
  const { N, V, C } = embeddingCheck(op, dout, 'dout', ids, dtable, 'dtable');
  nativeFn<EmbeddingFn>('embeddingBackward')(dtable.f32, dout.f32, ids.i32, N, V, C);
}
