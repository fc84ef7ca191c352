// The whole model for evaluation and generation, written once over a Backend: embedding →
// blocks → final RMSNorm → lm_head (→ per-token cross-entropy for evaluation). A quantized
// checkpoint runs on its packed weights (never dequantized as a whole: src/model/packed-linears.ts),
// a full-precision one on f32 weights; with precision 'bf16' (CUDA) the GEMMs take bf16 copies
// of their inputs (f32 sums) and lm_head is held in bf16.
//
// Two residencies:
// - 'resident': every block on the backend, windows in batches of up to B (CUDA evaluation,
//   generation everywhere); KvDecoder runs it one new token at a time over a key/value cache
//   per block (the prompt once, then one token per step; only the last row goes through the
//   final norm and lm_head). A model built with use 'decode' is sized for that alone: one row
//   of logits, no loss buffers, no attention-score scratch, steps of at most B·T tokens.
// - 'streamed': one block at a time over all windows, the hidden states on the host (the CPU's
//   evaluation, so a model larger than RAM needs only one block's weights at a time).
import { Tensor } from '../engine/tensor.js';
import { BackendAllocations, type Backend, type Precision } from '../backend/backend.js';
import { cpuBackend } from '../backend/cpu.js';
import type { ModelConfig } from './config.js';
import {
  allocBlockParams,
  blockForward,
  BlockArena,
  BlockWorkspace,
  denseLinears,
  largestLinearSize,
  linearRowWidth,
  uploadBlockParams,
  type BlockParams,
  type KvCache,
  type LinearImpl,
} from './block.js';
import { loadPackedBlock } from './quantized.js';
import { packedLinears, uploadPackedBlock } from './packed-linears.js';
import { ropeTables } from './rope.js';
import type { WeightSource } from './weights.js';

export type Residency = 'resident' | 'streamed';

export interface ModelOptions {
  /** Default 'resident'. */
  residency?: Residency;
  /** GEMM input precision (default f32; bf16 on CUDA only). */
  precision?: Precision;
  /** Windows per step and tokens per window the buffers are made for (default 1 × 1; a 'windows' model grows them on demand). */
  B?: number;
  T?: number;
  /** 'decode': sized for KvDecoder steps only (resident). Default 'windows'. */
  use?: 'windows' | 'decode';
  /** Called after each block is loaded (resident). */
  onBlock?: (i: number) => void;
}

interface ModelBlock<A> {
  params: BlockParams<A>; // norms and biases (and dense linears for a full-precision model)
  lin: LinearImpl<A>;
}

/** Per-step buffers for up to `rows` tokens. */
interface StepBuffers<A> {
  rows: number;
  mem: BackendAllocations<A>;
  x: A; // (rows, C)
  y: A; // (rows, C)
  ids: A; // (rows) i32
  normed: A; // (headRows, C)
  rstd: A; // (headRows)
  logits: A; // (headRows, V)
  targets: A; // (lossRows) i32
  losses: A; // (lossRows)
}

export class Model<A> {
  readonly cfg: ModelConfig;
  readonly residency: Residency;
  readonly precision: Precision;
  readonly use: 'windows' | 'decode';
  readonly B: number;
  readonly T: number;
  private readonly mem: BackendAllocations<A>; // weights and scratch (not the step buffers)
  private readonly blocks: ModelBlock<A>[] = []; // resident only
  private readonly embedding: A; // (V, C)
  private readonly lmHead: A; // (V, C), bf16 with bf16 GEMMs
  private readonly finalNorm: A; // (C)
  private readonly lowp: unknown = null;
  private readonly tiles: { w: A | null; dw: A | null };
  private readonly ws: BlockWorkspace<A>;
  private buffers: StepBuffers<A> | null = null;
  /** A workspace of another shape than B × T, kept for the next call (a last short batch, a decoding step). */
  private tail: BlockWorkspace<A> | null = null;

  constructor(
    readonly be: Backend<A>,
    /** Read again block by block when streamed (keep it open while the model is used). */
    private readonly src: WeightSource,
    { residency = 'resident', precision = 'f32', B = 1, T = 1, use = 'windows', onBlock }: ModelOptions = {},
  ) {
    const cfg = (this.cfg = src.cfg);
    this.residency = residency;
    this.precision = precision;
    this.use = use;
    this.B = B;
    this.T = T;
    if (residency === 'streamed' && use === 'decode') throw new Error('Model: decoding over kv caches needs every block resident');
    const mem = (this.mem = new BackendAllocations(be));
    try {
      const largest = largestLinearSize(cfg);
      this.tiles = mem.adopt(src.quant ? be.packedTiles(largest, { precision, training: false }) : { w: null, dw: null, free() {} });
      // bf16 scratch: x up to the widest activation, w up to the largest linear (lm_head is kept in bf16)
      if (precision === 'bf16') this.lowp = mem.adopt(be.linearScratch({ x: B * T * linearRowWidth(cfg), dout: 0, w: largest })).value;
      this.ws = mem.adopt(this.newWorkspace(B, T));
      if (residency === 'resident') {
        for (let i = 0; i < cfg.numLayers; i++) {
          this.blocks.push(this.loadBlock(i, mem));
          onBlock?.(i);
        }
      }
      const emb = src.embedding();
      this.embedding = mem.share(emb.f32);
      const head = src.lmHead(emb);
      this.lmHead = head === emb && precision === 'f32' ? this.embedding : mem.own(be.uploadFrozen(head.f32, precision));
      this.finalNorm = mem.share(src.finalNorm().f32);
      this.stepBuffers(B * T);
    } catch (e) {
      this.free();
      throw e;
    }
  }

  /** The model of `src` on the CPU, every block in memory, f32. */
  static load(src: WeightSource, onBlock?: (i: number) => void): Model<Tensor> {
    return new Model(cpuBackend, src, { onBlock });
  }

  /** Block i on the backend, its allocations owned by `mem`: dense f32, or packed for a quantized checkpoint. */
  private loadBlock(i: number, mem: BackendAllocations<A>): ModelBlock<A> {
    const { be, cfg, src } = this;
    if (!src.quant) {
      const arena = mem.adopt(new BlockArena(be, cfg));
      const host = allocBlockParams(cfg).params;
      src.loadBlock(i, host);
      uploadBlockParams(be, arena.params, host);
      return { params: arena.params, lin: denseLinears(be, cfg, arena.params, null, this.lowp) };
    }
    const { arena, block } = uploadPackedBlock(be, cfg, loadPackedBlock(src, i), mem, (_, host) => mem.upload(host.f32));
    return { params: arena.params, lin: packedLinears(block, null, { be, tile: this.tiles.w, dwTile: null, lowp: this.lowp }) };
  }

  private newWorkspace(B: number, T: number): BlockWorkspace<A> {
    return new BlockWorkspace(this.be, this.cfg, B, T, { training: false, precision: this.precision, cacheOnly: this.use === 'decode' });
  }

  /** The workspace made at construction for B × T, else the tail one for this shape. */
  private workspace(count: number, T: number): BlockWorkspace<A> {
    if (count === this.B && T === this.T) return this.ws;
    if (this.tail?.B !== count || this.tail.T !== T) {
      this.tail?.free();
      this.tail = null;
      this.tail = this.newWorkspace(count, T);
    }
    return this.tail;
  }

  /** Step buffers for `rows` tokens: a 'windows' model grows them, a 'decode' one refuses more than it was made for. */
  private stepBuffers(rows: number): StepBuffers<A> {
    const have = this.buffers;
    if (have && rows <= have.rows) return have;
    if (have && this.use === 'decode') throw new RangeError(`Model: ${rows} new tokens in one step, but its buffers hold 1 to ${have.rows}`);
    have?.mem.free();
    this.buffers = null;
    const { cfg, be } = this;
    const C = cfg.hiddenSize;
    const headRows = this.use === 'decode' ? 1 : rows; // rows through the final norm and lm_head
    const lossRows = this.use === 'decode' ? 0 : rows; // rows of targets and losses
    const mem = new BackendAllocations(be);
    try {
      this.buffers = {
        rows,
        mem,
        x: mem.alloc('f32', rows * C),
        y: mem.alloc('f32', rows * C),
        normed: mem.alloc('f32', headRows * C),
        rstd: mem.alloc('f32', headRows),
        logits: mem.alloc('f32', headRows * cfg.vocabSize),
        ids: mem.alloc('i32', rows),
        targets: mem.alloc('i32', lossRows),
        losses: mem.alloc('f32', lossRows),
      };
    } catch (e) {
      mem.free();
      throw e;
    }
    return this.buffers;
  }

  /** The first n elements of a, or a itself when it holds exactly n. */
  private first(a: A, n: number): A {
    return n === this.be.length(a) ? a : this.be.view(a, 0, n);
  }

  /** Steps of evaluating `count` windows (windowLosses' onProgress total). */
  evalSteps(count: number): number {
    return this.residency === 'streamed' ? this.cfg.numLayers * Math.ceil(count / this.B) + count : count;
  }

  /**
   * Next-token losses of `count` windows of T tokens (ids (count, T)), handed to onWindow in
   * window order: losses (T), losses[t] for predicting token t+1 (the last is 0). The array is
   * reused between calls of onWindow. T defaults to the model's; a shorter T (sequences of
   * another length, e.g. zero-shot requests) runs in a workspace of that shape.
   */
  windowLosses(
    ids: Int32Array,
    count: number,
    onWindow: (w: number, losses: Float32Array) => void,
    onProgress?: (done: number, total: number) => void,
    T: number = this.T,
  ): void {
    if (this.use === 'decode') throw new Error('Model.windowLosses: this model was built for cached decoding only');
    if (!(Number.isInteger(T) && T >= 1 && T <= this.T)) throw new RangeError(`Model.windowLosses: T must be an integer in 1..${this.T}, got ${T}`);
    if (!(Number.isInteger(count) && count >= 1)) throw new RangeError(`Model.windowLosses: count must be an integer >= 1, got ${count}`);
    if (ids.length < count * T) throw new RangeError(`Model.windowLosses: ids must hold ${count} × ${T} tokens, got ${ids.length}`);
    if (this.residency === 'streamed') this.streamedLosses(ids, count, T, onWindow, onProgress);
    else this.residentLosses(ids, count, T, onWindow, onProgress);
  }

  /** Windows in batches of B through every block, the head and the loss. */
  private residentLosses(ids: Int32Array, count: number, T: number, onWindow: (w: number, losses: Float32Array) => void, onProgress?: (done: number, total: number) => void): void {
    const total = this.evalSteps(count);
    const losses = new Float32Array(this.B * T);
    for (let w0 = 0; w0 < count; w0 += this.B) {
      const n = Math.min(this.B, count - w0);
      const N = n * T;
      const windows = ids.subarray(w0 * T, (w0 + n) * T);
      const x = this.hidden(windows, this.workspace(n, T));
      const lossesN = losses.subarray(0, N);
      this.be.download(this.losses(x, windows, n, T), lossesN);
      for (let w = 0; w < n; w++) onWindow(w0 + w, lossesN.subarray(w * T, (w + 1) * T));
      onProgress?.(w0 + n, total);
    }
  }

  /** Each block in turn over all windows (B at a time, hidden states on the host), then each window's head and loss. */
  private streamedLosses(ids: Int32Array, count: number, T: number, onWindow: (w: number, losses: Float32Array) => void, onProgress?: (done: number, total: number) => void): void {
    const { be, cfg } = this;
    const C = cfg.hiddenSize;
    const total = this.evalSteps(count);
    const bufs = this.stepBuffers(this.B * T);
    const hidden = new Float32Array(count * T * C); // (count*T, C)
    const rowsOf = (w0: number, n: number): Float32Array => hidden.subarray(w0 * T * C, (w0 + n) * T * C);
    for (let w0 = 0; w0 < count; w0 += this.B) {
      const N = Math.min(this.B, count - w0) * T;
      const idsD = this.first(bufs.ids, N), x = this.first(bufs.x, N * C);
      be.upload(idsD, ids.subarray(w0 * T, w0 * T + N));
      be.embeddingForward(x, idsD, this.embedding, N, cfg.vocabSize, C);
      be.download(x, rowsOf(w0, N / T));
    }
    let done = 0;
    for (let l = 0; l < cfg.numLayers; l++) {
      const layerMem = new BackendAllocations(be);
      try {
        const b = this.loadBlock(l, layerMem);
        for (let w0 = 0; w0 < count; w0 += this.B) {
          const n = Math.min(this.B, count - w0);
          const x = this.first(bufs.x, n * T * C), y = this.first(bufs.y, n * T * C);
          be.upload(x, rowsOf(w0, n));
          blockForward(cfg, b.params, this.workspace(n, T), x, y, b.lin);
          be.download(y, rowsOf(w0, n));
          onProgress?.(++done, total);
        }
      } finally {
        layerMem.free();
      }
    }
    const losses = new Float32Array(T);
    for (let w = 0; w < count; w++) {
      const x = this.first(bufs.x, T * C);
      be.upload(x, rowsOf(w, 1));
      be.download(this.losses(x, ids.subarray(w * T, (w + 1) * T), 1, T), losses);
      onWindow(w, losses);
      onProgress?.(++done, total);
    }
  }

  /** Per-token losses (n·T), left on the backend, of the final hidden states x (n·T, C) of n windows `ids` of T tokens. */
  private losses(x: A, ids: Int32Array, n: number, T: number): A {
    const { be, cfg } = this;
    const N = n * T;
    const bufs = this.stepBuffers(N);
    const logits = this.head(x, N);
    const targets = new Int32Array(N);
    for (let w = 0; w < n; w++) {
      for (let t = 0; t < T - 1; t++) targets[w * T + t] = ids[w * T + t + 1]!;
      targets[w * T + T - 1] = -100;
    }
    const tD = this.first(bufs.targets, N), lossD = this.first(bufs.losses, N);
    be.upload(tD, targets);
    be.crossEntropyForward(lossD, logits, tD, N, cfg.vocabSize, { check: false });
    return lossD;
  }

  /** logits (rows, V) = lm_head(rmsnorm(x (rows, C))), in the model's buffers. */
  private head(x: A, rows: number): A {
    const { be, cfg } = this;
    const C = cfg.hiddenSize;
    const V = cfg.vocabSize;
    const bufs = this.stepBuffers(this.use === 'decode' ? 1 : rows);
    const normed = this.first(bufs.normed, rows * C), rstd = this.first(bufs.rstd, rows), logits = this.first(bufs.logits, rows * V);
    be.rmsnormForward(normed, rstd, x, this.finalNorm, rows, C, cfg.rmsNormEps);
    be.linearForward(logits, normed, this.lmHead, null, { N: rows, O: V, I: C }, this.lowp);
    return logits;
  }

  /** logits (B*T, V) of token ids (B, T), on the host (resident). */
  forward(ids: Int32Array, B: number, T: number): Tensor {
    const N = B * T;
    if (ids.length !== N) throw new RangeError(`Model.forward: ids must hold ${B} × ${T} tokens, got ${ids.length}`);
    const x = this.hidden(ids, this.workspace(B, T));
    const logits = new Float32Array(N * this.cfg.vocabSize);
    this.be.download(this.head(x, N), logits);
    return Tensor.fromF32(logits, [N, this.cfg.vocabSize]);
  }

  /** Logits (V) of the token after the prefix `ids`: the whole prefix is run again. */
  nextTokenLogits(ids: Int32Array): Float32Array {
    const T = ids.length;
    const V = this.cfg.vocabSize;
    return this.forward(ids, 1, T).f32.subarray((T - 1) * V, T * V);
  }

  /**
   * Logits (V) of the last of `newIds`, T tokens of one sequence at positions pos .. pos+T-1,
   * over the kv caches of every block (one step of KvDecoder, which owns the caches and checks
   * the positions): the new keys and values are appended to the caches, and only the last row
   * goes through the final norm and lm_head. Written into `out`.
   */
  cachedNextTokenLogits(newIds: Int32Array, caches: readonly KvCache<A>[], pos: number, out: Float32Array): Float32Array {
    const { be, cfg } = this;
    const C = cfg.hiddenSize;
    const T = newIds.length;
    if (T < 1) throw new RangeError('Model: no new token in this step');
    if (caches.length !== this.blocks.length) throw new RangeError(`Model: ${caches.length} kv caches for ${this.blocks.length} blocks`);
    this.stepBuffers(T);
    const x = this.hidden(newIds, this.workspace(1, T), { caches, pos });
    be.download(this.head(be.view(x, (T - 1) * C, C), 1), out);
    return out;
  }

  /**
   * Embeds `ids` (N tokens, rows of ws) and runs every block over them, with `kv` over the
   * blocks' caches from position pos on; returns the final hidden states (N, C) before the
   * final norm, left in one of the model's two activation buffers.
   */
  private hidden(ids: Int32Array, ws: BlockWorkspace<A>, kv?: { caches: readonly KvCache<A>[]; pos: number }): A {
    const { be, cfg } = this;
    const C = cfg.hiddenSize;
    const N = ids.length;
    if (this.residency !== 'resident') throw new Error('Model: a streamed model only evaluates windows (windowLosses)');
    const bufs = this.stepBuffers(N);
    const idsD = this.first(bufs.ids, N);
    be.upload(idsD, ids);
    let x = this.first(bufs.x, N * C), y = this.first(bufs.y, N * C);
    be.embeddingForward(x, idsD, this.embedding, N, cfg.vocabSize, C);
    this.blocks.forEach((b, l) => {
      blockForward(cfg, b.params, ws, x, y, b.lin, kv && { cache: kv.caches[l]!, pos: kv.pos });
      [x, y] = [y, x];
    });
    return x;
  }

  free(): void {
    this.tail?.free();
    this.tail = null;
    this.buffers?.mem.free();
    this.buffers = null;
    this.mem.free();
  }
}

/**
 * Incremental decoding of one sequence over a resident Model with a key/value cache per block:
 * each nextTokenLogits call runs only the tokens the caches have not seen (the whole prompt on
 * the first call, then one token), so n tokens after a prompt of P cost P + n token forwards
 * instead of about n·(P + n/2). The logits equal Model.nextTokenLogits's up to the summation
 * order of attention over a longer key range. The caches (f32 keys after rope and values of
 * every block, maxTokens positions) and the rope tables of those positions are allocated once.
 */
export class KvDecoder<A> {
  readonly cfg: ModelConfig;
  private readonly mem: BackendAllocations<A>;
  private readonly caches: KvCache<A>[] = [];
  /** The ids whose keys and values are cached, in order. */
  private readonly seen: number[] = [];
  private readonly logits: Float32Array; // (V)

  constructor(
    readonly model: Model<A>,
    /** The most positions the sequence may reach (prompt plus new tokens). */
    readonly maxTokens: number,
  ) {
    if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) throw new RangeError(`KvDecoder: maxTokens must be an integer >= 1, got ${maxTokens}`);
    const cfg = (this.cfg = model.cfg);
    const mem = (this.mem = new BackendAllocations(model.be));
    const perCache = maxTokens * cfg.numKvHeads * cfg.headDim;
    try {
      const rope = ropeTables(cfg, 0, maxTokens);
      const cos = mem.upload(rope.cos.f32), sin = mem.upload(rope.sin.f32);
      for (let l = 0; l < cfg.numLayers; l++) this.caches.push({ k: mem.alloc('f32', perCache), v: mem.alloc('f32', perCache), cos, sin });
    } catch (e) {
      mem.free();
      throw e;
    }
    this.logits = new Float32Array(cfg.vocabSize);
  }

  /**
   * Logits (V) of the token after `ids`, which must extend the ids of the previous call. The
   * array is reused: it holds these logits until the next call.
   */
  nextTokenLogits(ids: Int32Array): Float32Array {
    const pos = this.seen.length;
    for (let i = 0; i < pos; i++) {
      if (ids[i] !== this.seen[i]) throw new Error(`KvDecoder: ids differ from the cached prefix at position ${i}`);
    }
    if (ids.length <= pos) throw new RangeError(`KvDecoder: no new token after the ${pos} cached ones`);
    if (ids.length > this.maxTokens) throw new RangeError(`KvDecoder: ${ids.length} tokens exceed the cache's ${this.maxTokens}`);
    this.model.cachedNextTokenLogits(ids.subarray(pos), this.caches, pos, this.logits);
    for (let i = pos; i < ids.length; i++) this.seen.push(ids[i]!);
    return this.logits;
  }

  free(): void {
    this.mem.free();
  }
}
