// Token embedding on CUDA over device arrays: the typed wrapper of
// native/cuda/kernels/embedding.cu. Same math as src/ops/embedding.ts and its twin
// (src/ops/ref/embedding.ts): out (N, C) = rows of table (V, C) picked by ids (N) i32, and the
// backward scatter-adds (+=) dout's rows into dtable. An id outside [0, V) throws the CPU op's
// RangeError naming the row before anything is written (src/ops/cuda/indices.ts; one small
// read-back, skipped with `check: false`).
import {
  cudaKernel,
  deviceOverlaps,
  expectDeviceDtype,
  expectDeviceLength,
  gridFor,
  launchKernel,
  type DeviceArray,
  expectKernelInt,
} from '../../engine/cuda.js';
import { embeddingIdError } from '../embedding.js';
import { firstBadIndexCuda, type IndexCheckOptions } from './indices.js';

const BLOCK = 256;
const FORWARD = cudaKernel('embedding.cu', 'eqat_embedding_forward', ['ptr', 'ptr', 'ptr', 'i64', 'i32', 'i32']);
const BACKWARD = cudaKernel('embedding.cu', 'eqat_embedding_backward', ['ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32']);

function checkArgs(
  op: string,
  rows: DeviceArray,
  rowsName: string,
  ids: DeviceArray,
  table: DeviceArray,
  tableName: string,
  N: number,
  V: number,
  C: number,
): void {
  for (const [name, v] of [['N', N], ['V', V], ['C', C]] as const) {
    expectKernelInt(v, 0, `${op}: ${name}`);
  }
  expectDeviceDtype(ids, 'i32', `${op}: ids`);
  expectDeviceLength(ids, N, `${op}: ids`, `(N=${N})`);
  expectDeviceDtype(rows, 'f32', `${op}: ${rowsName}`);
  expectDeviceLength(rows, N * C, `${op}: ${rowsName}`, `(N=${N}, C=${C})`);
  expectDeviceDtype(table, 'f32', `${op}: ${tableName}`);
  expectDeviceLength(table, V * C, `${op}: ${tableName}`, `(V=${V}, C=${C})`);
  // The written array must not overlap what the kernel reads.
  const [written, writtenName, read] = rowsName === 'out' ? [rows, 'out', [ids, table]] : [table, tableName, [ids, rows]];
  for (const a of read) {
    if (deviceOverlaps(written, a)) throw new RangeError(`${op}: ${writtenName} overlaps ${a === ids ? 'ids' : a === rows ? rowsName : tableName}`);
  }
}

function checkIds(op: string, ids: DeviceArray, N: number, V: number, opts: IndexCheckOptions): void {
  if (opts.check === false) return;
  const bad = firstBadIndexCuda(ids, N, V, null, op);
  if (bad) throw embeddingIdError(op, bad.row, bad.value, V);
}

/** out[n, :] = table[ids[n], :]. */
export function embeddingForwardCuda(
  out: DeviceArray, // (N, C)
  ids: DeviceArray, // (N) i32
  table: DeviceArray, // (V, C)
  N: number,
  V: number,
  C: number,
  opts: IndexCheckOptions = {},
): void {
  const op = 'embeddingForwardCuda';
  checkArgs(op, out, 'out', ids, table, 'table', N, V, C);
  checkIds(op, ids, N, V, opts);
  const n = N * C;
  if (n === 0) return;
  launchKernel(FORWARD, gridFor(n, BLOCK), BLOCK, [out, ids, table, n, V, C]);
}

/** Accumulates (+=) dout's rows into the rows of dtable selected by ids (rows in order, per column). */
export function embeddingBackwardCuda(
  dtable: DeviceArray, // (V, C) +=
  dout: DeviceArray, // (N, C)
  ids: DeviceArray, // (N) i32
  N: number,
  V: number,
  C: number,
  opts: IndexCheckOptions = {},
): void {
  const op = 'embeddingBackwardCuda';
  checkArgs(op, dout, 'dout', ids, dtable, 'dtable', N, V, C);
  checkIds(op, ids, N, V, opts);
  if (N === 0 || C === 0) return;
  launchKernel(BACKWARD, gridFor(C, BLOCK), BLOCK, [dtable, dout, ids, N, V, C]);
}
