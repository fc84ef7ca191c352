// Causal grouped-query attention on CUDA through GEMMs: the same op as src/ops/cuda/attention.ts
// (layout, options, saved lse, accumulating backward; twin src/ops/ref/attention.ts), with the
// products on tensor cores. Query rows are taken a chunk at a time; for each chunk, each batch
// entry b and each member i of a query-head group, one strided-batched cuBLASLt GEMM over the kv
// groups forms the scores S = Q Kᵀ of the keys the chunk can see (causal and window bounds),
// a row kernel (native/cuda/kernels/attention_rows.cu) turns them into P and lse, and a second
// GEMM forms O = P V. The backward recomputes S, forms dP = dO Vᵀ, turns both into P and
// dS = scale · P (dP - delta) (delta = rowsum(dO ∘ O)), and adds dV += Pᵀ dO, dK += dSᵀ Q and
// dQ += dS K with three more GEMMs. Scores exist for one chunk at a time: the scratch holds
// (Hkv, chunk, Tk) of them, never the whole (Tq, Tk) of every head.
//
// Precision: 'bf16' gives the GEMMs bf16 copies of q, k, v, dout and bf16 P and dS (f32 sums,
// f32 scores and outputs); 'f32' keeps every GEMM in f32 (matches the twin to rounding).
//
// Column-major views used below (cuBLASLt's convention, src/engine/cuda.ts GemmArgs): a head's
// rows of q, k, v, out (B, T, heads, D) are a (D × rows) matrix with leading dimension heads·D;
// a chunk's scores of one kv group are a (keys × rows) matrix with leading dimension ld, so a
// query row's scores are contiguous.
import {
  cudaBackend,
  cudaKernel,
  DeviceAllocations,
  deviceView,
  expectDeviceDtype,
  expectDeviceLength,
  launchKernel,
  type DeviceArray,
} from '../../engine/cuda.js';
import type { AttentionDims, AttentionOptions } from '../attention.js';
import { attentionDimsCuda, checkAttentionBackwardArrays, checkAttentionForwardArrays, type AttentionShape } from './attention.js';
import { f32ToBf16Cuda } from './elementwise.js';

const ROW_THREADS = 256;
const MAX_ROW_BLOCKS = 1 << 20;
const ROW_SCALARS = ['i64', 'i32', 'i64', 'i32', 'i32', 'i32', 'i32', 'i32', 'i32', 'f32'] as const;
const ROWS_FORWARD = cudaKernel('attention_rows.cu', 'eqat_attn_rows_forward', ['ptr', 'ptr', 'ptr', 'ptr', ...ROW_SCALARS]);
const ROWS_BACKWARD = cudaKernel('attention_rows.cu', 'eqat_attn_rows_backward', [
  'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', 'ptr', ...ROW_SCALARS,
]);
const DELTA = cudaKernel('attention_rows.cu', 'eqat_attn_delta', ['ptr', 'ptr', 'ptr', 'i32', 'i32', 'i32', 'i32']);

/**
 * Which CUDA attention the blocks use, from EQAT_CUDA_ATTENTION: 'gemm' (this file, the
 * default), 'tc' (the tensor-core kernels of src/ops/cuda/attention-tc.ts, for the shapes and
 * precision they take; the GEMM path otherwise) or 'flash' (the kernels of
 * src/ops/cuda/attention.ts, no score chunks at all).
 */
export function attentionPathCuda(): 'gemm' | 'tc' | 'flash' {
  const v = process.env['EQAT_CUDA_ATTENTION'];
  if (v === undefined || v === '' || v === 'gemm') return 'gemm';
  if (v === 'tc' || v === 'flash') return v;
  throw new Error(`EQAT_CUDA_ATTENTION=${v}: must be 'gemm', 'tc' or 'flash'`);
}

/** Default cap on the scratch's score buffers (S and dP in f32, P and dS in the GEMM type). */
export const ATTENTION_SCORE_BYTES = 128 * 2 ** 20;

/**
 * The cap in use: EQAT_CUDA_ATTENTION_SCORE_MIB MiB when set (more rows per chunk: fewer,
 * larger GEMMs for more device memory), else ATTENTION_SCORE_BYTES.
 */
export function attentionScoreBytesCuda(): number {
  const v = process.env['EQAT_CUDA_ATTENTION_SCORE_MIB'];
  if (v === undefined || v === '') return ATTENTION_SCORE_BYTES;
  const mib = Number(v);
  if (!Number.isFinite(mib) || mib <= 0) throw new Error(`EQAT_CUDA_ATTENTION_SCORE_MIB=${v}: must be a positive number of MiB`);
  return Math.floor(mib * 2 ** 20);
}

/**
 * Device scratch of attention through GEMMs for one shape and precision, allocated once (a
 * block workspace owns one): the score buffers of a chunk of query rows and, in bf16, copies
 * of q, k, v and dout for the GEMMs. `chunk` rows per chunk are chosen to keep the score
 * buffers under `scoreBytes`.
 */
export class AttentionGemmScratch {
  readonly chunk: number; // query rows per chunk
  readonly ld: number; // leading dimension of a chunk's score rows (Tk rounded up to 8)
  readonly S: DeviceArray; // (Hkv, chunk, ld) f32 scores
  readonly dP: DeviceArray; // (Hkv, chunk, ld) f32, backward only
  readonly P: DeviceArray; // (Hkv, chunk, ld) probabilities, GEMM type
  readonly dS: DeviceArray; // (Hkv, chunk, ld) score gradients, GEMM type, backward only
  readonly delta: DeviceArray; // (B, H, Tq) f32, backward only
  readonly lowp: { q: DeviceArray; k: DeviceArray; v: DeviceArray; dout: DeviceArray } | null; // bf16 copies
  private readonly mem = new DeviceAllocations();

  constructor(
    readonly shape: AttentionShape,
    readonly precision: 'f32' | 'bf16',
    { training = true, scoreBytes = attentionScoreBytesCuda() }: { training?: boolean; scoreBytes?: number } = {},
  ) {
    const { B, Tq, Tk, H, Hkv, D } = shape;
    const e = precision === 'bf16' ? 2 : 4;
    this.ld = Math.ceil(Tk / 8) * 8;
    const perRow = Hkv * this.ld * (training ? 2 * 4 + 2 * e : 4 + e);
    let chunk = Math.max(1, Math.min(Tq, Math.floor(scoreBytes / perRow)));
    if (chunk >= 64 && chunk < Tq) chunk -= chunk % 64; // whole tiles for the GEMMs
    this.chunk = chunk;
    const n = Hkv * chunk * this.ld;
    const gemmType = precision === 'bf16' ? 'bf16' : 'f32';
    try {
      this.S = this.mem.alloc('f32', n);
      this.P = this.mem.alloc(gemmType, n);
      this.dP = this.mem.alloc('f32', training ? n : 0);
      this.dS = this.mem.alloc(gemmType, training ? n : 0);
      this.delta = this.mem.alloc('f32', training ? B * H * Tq : 0);
      const nq = B * Tq * H * D, nkv = B * Tk * Hkv * D;
      this.lowp =
        precision === 'bf16'
          ? {
              q: this.mem.alloc('bf16', nq),
              k: this.mem.alloc('bf16', nkv),
              v: this.mem.alloc('bf16', nkv),
              dout: this.mem.alloc('bf16', training ? nq : 0),
            }
          : null;
    } catch (e) {
      this.mem.free();
      throw e;
    }
  }

  free(): void {
    this.mem.free();
  }
}

/** The GEMM operand for a: its bf16 copy (made now) in bf16 precision, else a itself. */
function operand(a: DeviceArray, copy: DeviceArray | undefined): DeviceArray {
  if (!copy) return a;
  f32ToBf16Cuda(copy, a);
  return copy;
}

interface ChunkRange {
  b: number;
  i: number; // member of the query-head group
  t0: number; // first query row
  nq: number; // query rows
  jlo: number; // first visible key
  n: number; // keys from jlo
}

/** Every (b, i, chunk) of a call, with the keys its rows can see. */
function* chunks(d: AttentionDims, chunk: number): Generator<ChunkRange> {
  const r = d.H / d.Hkv;
  for (let b = 0; b < d.B; b++) {
    for (let i = 0; i < r; i++) {
      for (let t0 = 0; t0 < d.Tq; t0 += chunk) {
        const nq = Math.min(chunk, d.Tq - t0);
        const pos0 = d.qOffset + t0;
        const jhi = Math.min(d.Tk, pos0 + nq);
        const jlo = d.window > 0 ? Math.max(0, pos0 - d.window + 1) : 0;
        yield { b, i, t0, nq, jlo, n: jhi - jlo };
      }
    }
  }
}

/** A GEMM operand: a column-major matrix at element `off` of `a` with leading dimension `ld`, the next group's `stride` elements on. */
interface Operand {
  a: DeviceArray;
  off: number;
  ld: number;
  stride: number;
}

/**
 * One strided-batched GEMM over `groups` kv groups: C_g (m × n) = op(A_g) op(B_g), or += when
 * accumulating (f32 sums; bf16 or f32 inputs as stored).
 */
function groupGemm(groups: number, opA: 0 | 1, opB: 0 | 1, m: number, n: number, k: number, A: Operand, B: Operand, C: Operand, accumulate: boolean): void {
  const at = (o: Operand): bigint => o.a.handle + BigInt(o.off * (o.a.dtype === 'f32' ? 4 : 2));
  cudaBackend().gemm({
    opA,
    opB,
    m,
    n,
    k,
    alpha: 1,
    A: at(A),
    lda: A.ld,
    B: at(B),
    ldb: B.ld,
    beta: accumulate ? 1 : 0,
    C: at(C),
    ldc: C.ld,
    abType: A.a.dtype === 'bf16' ? 'bf16' : 'f32',
    cType: C.a.dtype === 'bf16' ? 'bf16' : 'f32',
    batch: groups > 1 ? { count: groups, strideA: A.stride, strideB: B.stride, strideC: C.stride } : undefined,
  });
}

/** Chunk c's keys of every kv group in a (B, Tk, Hkv, D) array: (D × keys), group g at +g·D. */
function keysOf(a: DeviceArray, d: AttentionDims, c: ChunkRange): Operand {
  return { a, off: (c.b * d.Tk + c.jlo) * d.Hkv * d.D, ld: d.Hkv * d.D, stride: d.D };
}

/** Chunk c's query rows of heads g·r + i in a (B, Tq, H, D) array: (D × rows), group g at +r·D. */
function rowsOf(a: DeviceArray, d: AttentionDims, c: ChunkRange): Operand {
  return { a, off: ((c.b * d.Tq + c.t0) * d.H + c.i) * d.D, ld: d.H * d.D, stride: (d.H / d.Hkv) * d.D };
}

/** A chunk buffer of the scratch: (keys × rows) per group, rows `ld` apart, groups chunk·ld apart. */
function chunkOf(a: DeviceArray, s: AttentionGemmScratch): Operand {
  return { a, off: 0, ld: s.ld, stride: s.chunk * s.ld };
}

function checkScratch(op: string, s: AttentionGemmScratch, d: AttentionDims, training: boolean): void {
  const sh = s.shape;
  if (sh.B !== d.B || sh.Tq !== d.Tq || sh.Tk !== d.Tk || sh.H !== d.H || sh.Hkv !== d.Hkv || sh.D !== d.D) {
    throw new RangeError(`${op}: the scratch was made for another shape`);
  }
  if (training && s.dP.length === 0) throw new RangeError(`${op}: the scratch was made without the backward's buffers`);
}

/** S_g (keys × rows) = keys_g · rows_hᵀ for chunk c, h = g·r + i: the scores (keys K, rows Q) and dP (keys V, rows dO). */
function scores(d: AttentionDims, c: ChunkRange, S: DeviceArray, keys: DeviceArray, rows: DeviceArray, s: AttentionGemmScratch): void {
  groupGemm(d.Hkv, 1, 0, c.n, c.nq, d.D, keysOf(keys, d, c), rowsOf(rows, d, c), chunkOf(S, s), false);
}

/** out_h[rows] (=, or += when accumulating) P_g (rows × keys) · keys_g: O = P V and dQ += dS K. */
function rowsTimesKeys(d: AttentionDims, c: ChunkRange, out: DeviceArray, P: DeviceArray, keys: DeviceArray, s: AttentionGemmScratch, accumulate: boolean): void {
  groupGemm(d.Hkv, 0, 0, d.D, c.nq, c.n, keysOf(keys, d, c), chunkOf(P, s), rowsOf(out, d, c), accumulate);
}

/** dkv_g[keys] += P_gᵀ (keys × rows) · rows_h: dV += Pᵀ dO and dK += dSᵀ Q. */
function keysTimesRows(d: AttentionDims, c: ChunkRange, dkv: DeviceArray, P: DeviceArray, rows: DeviceArray, s: AttentionGemmScratch): void {
  groupGemm(d.Hkv, 0, 1, d.D, c.n, c.nq, rowsOf(rows, d, c), chunkOf(P, s), keysOf(dkv, d, c), true);
}

/** The row kernels' shared scalars for chunk c. */
function rowScalars(d: AttentionDims, c: ChunkRange, s: AttentionGemmScratch): number[] {
  const r = d.H / d.Hkv;
  return [s.chunk * s.ld, s.ld, r * d.Tq, c.nq, d.Hkv, c.n, d.qOffset + c.t0, c.jlo, d.window, 1 / Math.sqrt(d.D)];
}

/** View of the (B, H, Tq) array at row t0 of head i of batch entry b (groups then step by r·Tq). */
function rowView(a: DeviceArray, d: AttentionDims, c: ChunkRange): DeviceArray {
  const at = (c.b * d.H + c.i) * d.Tq + c.t0;
  return deviceView(a, at, a.length - at);
}

/** delta (B, H, Tq) = rowsum(dout ∘ out) over D, each row summed in f64 and rounded once: the backward's softmax term. */
export function attentionDeltaCuda(delta: DeviceArray, dout: DeviceArray, out: DeviceArray, d: AttentionDims): void {
  launchKernel(DELTA, Math.min(d.B * d.Tq * d.H, MAX_ROW_BLOCKS), 32 * Math.min(8, Math.ceil(d.D / 32)), [delta, dout, out, d.B, d.Tq, d.H, d.D]);
}

/** attentionForwardCuda's result (out and lse) through GEMMs; `scratch` made for this shape. */
export function attentionGemmForwardCuda(
  out: DeviceArray, // (B, Tq, H, D)
  lse: DeviceArray, // (B, H, Tq)
  q: DeviceArray, // (B, Tq, H, D)
  k: DeviceArray, // (B, Tk, Hkv, D)
  v: DeviceArray, // (B, Tk, Hkv, D)
  shape: AttentionShape,
  opts: AttentionOptions,
  scratch: AttentionGemmScratch,
): void {
  const op = 'attentionGemmForwardCuda';
  const d = attentionDimsCuda(op, shape, opts);
  checkScratch(op, scratch, d, false);
  checkAttentionForwardArrays(op, d, { out, lse, q, k, v });
  const lp = scratch.lowp;
  const qg = operand(q, lp?.q), kg = operand(k, lp?.k), vg = operand(v, lp?.v);
  const { S, P, chunk } = scratch;
  const p32 = P.dtype === 'f32' ? P : null, p16 = P.dtype === 'bf16' ? P : null;
  for (const c of chunks(d, chunk)) {
    scores(d, c, S, kg, qg, scratch);
    launchKernel(ROWS_FORWARD, Math.min(c.nq * d.Hkv, MAX_ROW_BLOCKS), ROW_THREADS, [S, p32 ?? 0n, p16 ?? 0n, rowView(lse, d, c), ...rowScalars(d, c, scratch)]);
    rowsTimesKeys(d, c, out, P, vg, scratch, false);
  }
}

/** attentionBackwardCuda through GEMMs: ACCUMULATES (+=) into dq, dk and dv. */
export function attentionGemmBackwardCuda(
  dq: DeviceArray, // (B, Tq, H, D) +=
  dk: DeviceArray, // (B, Tk, Hkv, D) +=
  dv: DeviceArray, // (B, Tk, Hkv, D) +=
  dout: DeviceArray, // (B, Tq, H, D)
  q: DeviceArray, // (B, Tq, H, D)
  k: DeviceArray, // (B, Tk, Hkv, D)
  v: DeviceArray, // (B, Tk, Hkv, D)
  out: DeviceArray, // (B, Tq, H, D)
  lse: DeviceArray, // (B, H, Tq)
  shape: AttentionShape,
  opts: AttentionOptions,
  scratch: AttentionGemmScratch,
): void {
  const op = 'attentionGemmBackwardCuda';
  const d = attentionDimsCuda(op, shape, opts);
  checkScratch(op, scratch, d, true);
  checkAttentionBackwardArrays(op, d, { dq, dk, dv, dout, q, k, v, out, lse });
  const { S, dP, P, dS, delta, chunk } = scratch;
  attentionDeltaCuda(delta, dout, out, d);
  const lp = scratch.lowp;
  const qg = operand(q, lp?.q), kg = operand(k, lp?.k), vg = operand(v, lp?.v), dog = operand(dout, lp?.dout);
  const p32 = P.dtype === 'f32' ? P : null, p16 = P.dtype === 'bf16' ? P : null;
  const ds32 = dS.dtype === 'f32' ? dS : null, ds16 = dS.dtype === 'bf16' ? dS : null;
  for (const c of chunks(d, chunk)) {
    scores(d, c, S, kg, qg, scratch);
    scores(d, c, dP, vg, dog, scratch); // dP = dO Vᵀ, laid out as the scores
    launchKernel(ROWS_BACKWARD, Math.min(c.nq * d.Hkv, MAX_ROW_BLOCKS), ROW_THREADS, [
      S, dP, p32 ?? 0n, p16 ?? 0n, ds32 ?? 0n, ds16 ?? 0n, rowView(lse, d, c), rowView(delta, d, c), ...rowScalars(d, c, scratch),
    ]);
    keysTimesRows(d, c, dv, P, dog, scratch); // dV += Pᵀ dO
    keysTimesRows(d, c, dk, dS, qg, scratch); // dK += dSᵀ Q
    rowsTimesKeys(d, c, dq, dS, kg, scratch, true); // dQ += dS K
  }
}
