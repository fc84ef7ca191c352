// Reference twin of src/ops/embedding.ts (slow, obvious): row copies forward, row additions
// backward in row order, ids validated first so nothing is written on error.
import type { Tensor } from '../../engine/tensor.js';
import { embeddingCheck, embeddingIdError } from '../embedding.js';

function checkIds(op: string, ids: Int32Array, V: number): void {
  for (let n = 0; n < ids.length; n++) {
    const id = ids[n]!;
    if (id < 0 || id >= V) throw embeddingIdError(op, n, id, V);
  }
}

export function embeddingForwardRef(
  out: Tensor, // (N, C)
  ids: Tensor, // (N) i32
  table: Tensor, // (V, C)
): void {
  const op = 'embeddingForwardRef';
  const { N, V, C } = embeddingCheck(op, out, 'out', ids, table, 'table');
  checkIds(op, ids.i32, V);
  const o = out.f32, tab = table.f32, id = ids.i32;
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) o[n * C + c] = tab[id[n]! * C + c]!;
  }
}

export function embeddingBackwardRef(
  dtable: Tensor, // (V, C) +=
  dout: Tensor, // (N, C)
  ids: Tensor, // (N) i32
): void {
  const op = 'embeddingBackwardRef';
  const { N, V, C } = embeddingCheck(op, dout, 'dout', ids, dtable, 'dtable');
  checkIds(op, ids.i32, V);
  const g = dtable.f32, d = dout.f32, id = ids.i32;
  for (let n = 0; n < N; n++) {
    for (let c = 0; c < C; c++) g[id[n]! * C + c] = Math.fround(g[id[n]! * C + c]! + d[n * C + c]!);
  }
}
