// Whole-model forward on CUDA for evaluation and generation: embedding → blocks → final
// RMSNorm → lm_head (→ cross-entropy for evaluation), on the device, windows in batches. The
// model is uploaded once: a quantized checkpoint stays packed (GPTQ integers and zero points,
// f32 step sizes; each linear dequantizes its weight into one shared tile right before its
// GEMM), a full-precision one is held as f32. Only token ids go up; per-token losses (or one
// row of logits, for generation) come back. Generation decodes over key/value caches
// (DeviceKvDecoder): the prompt once, then one token per step.
//
// Numerics follow the CPU path (src/model/model.ts, src/pipeline/eval.ts) op for op; with
// precision 'bf16' the GEMMs take bf16 copies of their inputs (f32 sums), as in Block-AP.
import { DeviceAllocations, deviceView, downloadDevice, uploadDevice, type DeviceArray } from '../engine/cuda.js';
import type { Tensor } from '../engine/tensor.js';
import type { ModelConfig } from './config.js';
import {
  BIAS_OF,
  BLOCK_LINEARS,
  allocBlockParams,
  blockForward,
  BlockArena,
  BlockWorkspace,
  denseLinears,
  largestLinearSize,
  linearDims,
  linearRowWidth,
  uploadBlockParams,
  type BlockLinear,
  type KvCache,
  type LinearImpl,
} from './block.js';
import { cudaBackend } from '../backend/cuda.js';
import { loadPackedBlock, type PackedBlock } from './quantized.js';
import { cachedPrefixLength } from './model.js';
import { ropeTables } from './rope.js';
import type { WeightSource } from './weights.js';
import { dequantizeGptqCuda, freePackedWeightCuda, gptqScaleGradCuda, uploadPackedWeight, type PackedWeightCuda } from '../ops/cuda/gptq.js';
import { linearBackwardCuda, linearForwardCuda, uploadFrozenWeight, type LowPrecisionScratch } from '../ops/cuda/linear.js';
import { embeddingForwardCuda } from '../ops/cuda/embedding.js';
import { rmsnormForwardCuda } from '../ops/cuda/rmsnorm.js';
import { crossEntropyForwardCuda } from '../ops/cuda/crossentropy.js';

/** A quantized block's linears on the device: packed integers, zero points and f32 step sizes. */
export interface PackedLinearsCuda {
  weights: Record<BlockLinear, PackedWeightCuda>;
  scales: Record<BlockLinear, DeviceArray>; // (O, I/G) f32
}

/**
 * Linears over packed weights: W = (q − z)·s is dequantized into wTile (f32), or into lowp.wb
 * (bf16) with bf16 GEMMs, right before each GEMM; biases from `biases` (frozen). With `train`,
 * the backward forms dx and, in dwTile, the layer's weight gradient dW = doutᵀ x, which goes at
 * once into the step-size gradient dscales[o, g] += Σ_{i in g} (q − z)·dW (E2E-QP); without it
 * the linears are forward only.
 */
export function packedLinearsCuda(
  cfg: ModelConfig,
  packed: PackedLinearsCuda,
  biases: Partial<Record<string, DeviceArray>>,
  wTile: DeviceArray,
  lowp: LowPrecisionScratch | null,
  train: { dscales: Record<BlockLinear, DeviceArray>; dwTile: DeviceArray } | null = null,
): LinearImpl<DeviceArray> {
  // with bf16 GEMMs the weight is dequantized straight into the bf16 scratch the GEMM reads
  const dequantized = (key: BlockLinear): { w: DeviceArray; O: number; I: number } => {
    const [O, I] = linearDims(cfg, key);
    const w = deviceView(lowp ? lowp.wb : wTile, 0, O * I);
    dequantizeGptqCuda(w, packed.weights[key], packed.scales[key]);
    return { w, O, I };
  };
  return {
    bf16Inputs: lowp !== null,
    forward(out, x, key, N) {
      const { w, O, I } = dequantized(key);
      linearForwardCuda(out, x, w, biases[BIAS_OF[key]], { N, O, I }, lowp);
    },
    backward(dx, dout, x, key, N, accumulateDx) {
      if (!train) throw new Error('packedLinearsCuda: built for the forward only (no step-size gradients given)');
      const { w, O, I } = dequantized(key);
      const dw = deviceView(train.dwTile, 0, O * I); // overwritten by the weight-gradient GEMM
      linearBackwardCuda(dx, dw, null, dout, x, w, { N, O, I }, accumulateDx, lowp, false);
      gptqScaleGradCuda(train.dscales[key], dw, packed.weights[key]);
    },
  };
}

/**
 * Uploads packed block b: its norms and biases into an arena without dense linears, and the
 * GPTQ integers and zero points of every linear, all owned by `mem`. Each linear's step sizes go
 * where `scales` puts them: an upload of their own for evaluation, a view into the trained
 * step-size arena for E2E-QP.
 */
export function uploadPackedBlock(
  cfg: ModelConfig,
  b: PackedBlock,
  mem: DeviceAllocations,
  scales: (key: BlockLinear, host: Tensor) => DeviceArray,
): { arena: BlockArena<DeviceArray>; packed: PackedLinearsCuda } {
  const arena = mem.adopt(new BlockArena(cudaBackend, cfg, { linears: false }));
  uploadBlockParams(cudaBackend, arena.params, b.params);
  const packed: PackedLinearsCuda = { weights: {} as PackedLinearsCuda['weights'], scales: {} as PackedLinearsCuda['scales'] };
  for (const [key] of BLOCK_LINEARS) {
    const w = uploadPackedWeight(b.weights[key]);
    mem.adopt({ free: () => freePackedWeightCuda(w) });
    packed.weights[key] = w;
    packed.scales[key] = scales(key, b.scales[key]);
  }
  return { arena, packed };
}

/** The first n elements of a, or a itself when it holds exactly n. */
function viewOf(a: DeviceArray, n: number): DeviceArray {
  return n === a.length ? a : deviceView(a, 0, n);
}

interface DeviceBlock {
  arena: BlockArena<DeviceArray>; // norms and biases (and dense linears for a full-precision model)
  lin: LinearImpl<DeviceArray>;
}

export class DeviceModel {
  private readonly mem = new DeviceAllocations(); // everything on the device but the tail workspace
  private readonly blocks: DeviceBlock[] = [];
  private embedding!: DeviceArray; // (V, C)
  private lmHead!: DeviceArray; // (V, C)
  private finalNorm!: DeviceArray; // (C)
  private readonly ws: BlockWorkspace<DeviceArray>;
  private readonly x: DeviceArray; // (B*T, C)
  private readonly y: DeviceArray; // (B*T, C)
  private readonly normed: DeviceArray; // (B*T, C)
  private readonly rstd: DeviceArray; // (B*T)
  private readonly logits: DeviceArray; // (B*T, V)
  private readonly ids: DeviceArray; // (B*T) i32
  private readonly targets: DeviceArray; // (B*T) i32
  private readonly losses: DeviceArray; // (B*T)
  private readonly lowp: LowPrecisionScratch | null = null;
  private readonly wTile: DeviceArray;
  readonly cfg: ModelConfig;

  /**
   * Uploads the model for batches of up to B windows of T tokens. `use: 'decode'` sizes it for
   * cachedNextTokenLogits only (steps of up to B·T tokens): one row of logits instead of B·T, no
   * loss buffers, no GEMM-attention scratch; windowLosses then refuses.
   */
  constructor(
    src: WeightSource,
    readonly B: number,
    readonly T: number,
    readonly precision: 'f32' | 'bf16',
    readonly use: 'windows' | 'decode' = 'windows',
  ) {
    const cfg = (this.cfg = src.cfg);
    const C = cfg.hiddenSize;
    const N = B * T;
    const rows = use === 'decode' ? 1 : N; // rows through the final norm and lm_head
    const lossRows = use === 'decode' ? 0 : N; // rows of targets and losses (windowLosses)
    const mem = this.mem;
    try {
      const largest = largestLinearSize(cfg);
      this.wTile = mem.alloc('f32', src.quant && precision === 'f32' ? largest : 0); // bf16: lowp.wb holds the weight
      // bf16 scratch: x up to the widest activation, w up to the largest linear (lm_head is kept in bf16)
      if (precision === 'bf16') {
        this.lowp = { xb: mem.alloc('bf16', N * linearRowWidth(cfg)), doutb: mem.alloc('bf16', 0), wb: mem.alloc('bf16', largest) };
      }
      this.ws = mem.adopt(new BlockWorkspace(cudaBackend, cfg, B, T, { training: false, precision, cacheOnly: use === 'decode' }));
      for (let i = 0; i < cfg.numLayers; i++) this.blocks.push(this.loadBlock(src, i));
      const emb = src.embedding();
      this.embedding = mem.upload(emb.f32);
      const head = src.lmHead(emb);
      this.lmHead = head === emb && precision === 'f32' ? this.embedding : uploadFrozenWeight(mem, head.f32, precision); // bf16 with bf16 GEMMs
      this.finalNorm = mem.upload(src.finalNorm().f32);
      this.x = mem.alloc('f32', N * C);
      this.y = mem.alloc('f32', N * C);
      this.normed = mem.alloc('f32', rows * C);
      this.rstd = mem.alloc('f32', rows);
      this.logits = mem.alloc('f32', rows * cfg.vocabSize);
      this.ids = mem.alloc('i32', N);
      this.targets = mem.alloc('i32', lossRows);
      this.losses = mem.alloc('f32', lossRows);
    } catch (e) {
      this.free();
      throw e;
    }
  }

  private loadBlock(src: WeightSource, i: number): DeviceBlock {
    const cfg = this.cfg;
    if (!src.quant) {
      const arena = this.mem.adopt(new BlockArena(cudaBackend, cfg));
      const host = allocBlockParams(cfg).params;
      src.loadBlock(i, host);
      uploadBlockParams(cudaBackend, arena.params, host);
      return { arena, lin: denseLinears(cudaBackend, cfg, arena.params, null, this.lowp) };
    }
    const { arena, packed } = uploadPackedBlock(cfg, loadPackedBlock(src, i), this.mem, (_, host) => this.mem.upload(host.f32));
    return { arena, lin: packedLinearsCuda(cfg, packed, arena.params, this.wTile, this.lowp) };
  }

  /**
   * Next-token losses of `count` ≤ B windows of T tokens (ids (count, T)): losses[w*T + t] for
   * predicting token t+1 of window w, t < T − 1 (the last position of each window is 0).
   */
  windowLosses(ids: Int32Array, count: number): Float32Array {
    const { cfg, T } = this;
    const V = cfg.vocabSize;
    if (this.use === 'decode') throw new Error('DeviceModel.windowLosses: this model was built for cached decoding only');
    if (count < 1 || count > this.B) throw new RangeError(`DeviceModel.windowLosses: count must be in [1, ${this.B}], got ${count}`);
    if (ids.length !== count * T) throw new RangeError(`DeviceModel.windowLosses: ids must hold ${count} × ${T} tokens, got ${ids.length}`);
    const N = count * T;
    const logits = this.logitsOf(ids, count);
    const targets = new Int32Array(N);
    for (let w = 0; w < count; w++) {
      for (let t = 0; t < T - 1; t++) targets[w * T + t] = ids[w * T + t + 1]!;
      targets[w * T + T - 1] = -100;
    }
    const tD = viewOf(this.targets, N), lossD = viewOf(this.losses, N);
    uploadDevice(tD, targets);
    crossEntropyForwardCuda(lossD, logits, tD, N, V, { check: false });
    return downloadDevice(lossD, new Float32Array(N));
  }

  /**
   * Logits (V) of the last of `newIds`, T ≤ B·T tokens of one sequence at positions
   * pos .. pos+T-1, over the kv caches of every block (one step of DeviceKvDecoder, which owns
   * the caches and checks the positions): the new tokens' keys and values are appended to the
   * caches, and only the last row goes through the final norm and lm_head. Written into `out`.
   */
  cachedNextTokenLogits(newIds: Int32Array, caches: readonly KvCache<DeviceArray>[], pos: number, out: Float32Array): Float32Array {
    const { cfg } = this;
    const C = cfg.hiddenSize;
    const V = cfg.vocabSize;
    const T = newIds.length;
    if (T < 1 || T > this.B * this.T) throw new RangeError(`DeviceModel: ${T} new tokens in one step, but its buffers hold 1 to ${this.B * this.T}`);
    if (caches.length !== this.blocks.length) throw new RangeError(`DeviceModel: ${caches.length} kv caches for ${this.blocks.length} blocks`);
    const x = this.hidden(newIds, this.workspace(1, T), { caches, pos });
    const normed = viewOf(this.normed, C), rstd = viewOf(this.rstd, 1), logits = viewOf(this.logits, V);
    rmsnormForwardCuda(normed, rstd, deviceView(x, (T - 1) * C, C), this.finalNorm, 1, C, cfg.rmsNormEps);
    linearForwardCuda(logits, normed, this.lmHead, null, { N: 1, O: V, I: C }, this.lowp);
    return downloadDevice(logits, out);
  }

  /** Logits (count·T, V) of `count` ≤ B windows of T tokens (ids (count, T)), left on the device. */
  private logitsOf(ids: Int32Array, count: number): DeviceArray {
    const { cfg, T } = this;
    const C = cfg.hiddenSize;
    const V = cfg.vocabSize;
    const N = count * T;
    const x = this.hidden(ids, this.workspace(count, T));
    const normed = viewOf(this.normed, N * C), rstd = viewOf(this.rstd, N), logits = viewOf(this.logits, N * V);
    rmsnormForwardCuda(normed, rstd, x, this.finalNorm, N, C, cfg.rmsNormEps);
    linearForwardCuda(logits, normed, this.lmHead, null, { N, O: V, I: C }, this.lowp);
    return logits;
  }

  /**
   * Embeds `ids` (N tokens, rows of ws) and runs every block over them, with `kv` over the
   * blocks' caches from position pos on; returns the final hidden states (N, C) before the
   * final norm, left in one of the model's two activation buffers.
   */
  private hidden(ids: Int32Array, ws: BlockWorkspace<DeviceArray>, kv?: { caches: readonly KvCache<DeviceArray>[]; pos: number }): DeviceArray {
    const { cfg } = this;
    const C = cfg.hiddenSize;
    const N = ids.length;
    const idsD = viewOf(this.ids, N);
    uploadDevice(idsD, ids);
    let x = viewOf(this.x, N * C), y = viewOf(this.y, N * C);
    embeddingForwardCuda(x, idsD, this.embedding, N, cfg.vocabSize, C);
    this.blocks.forEach((b, l) => {
      blockForward(cfg, b.arena.params, ws, x, y, b.lin, kv && { cache: kv.caches[l]!, pos: kv.pos });
      [x, y] = [y, x];
    });
    return x;
  }

  /** The workspace made at construction for B × T, else one other shape kept for the next call (a last short batch, a decoding step). */
  private tail: BlockWorkspace<DeviceArray> | null = null;
  private workspace(count: number, T: number): BlockWorkspace<DeviceArray> {
    if (count === this.B && T === this.T) return this.ws;
    if (this.tail?.B !== count || this.tail.T !== T) {
      this.tail?.free();
      this.tail = null;
      this.tail = new BlockWorkspace(cudaBackend, this.cfg, count, T, { training: false, precision: this.precision, cacheOnly: this.use === 'decode' });
    }
    return this.tail;
  }

  free(): void {
    this.tail?.free();
    this.tail = null;
    this.mem.free();
  }
}

/**
 * Incremental decoding of one sequence on CUDA over a DeviceModel, as KvDecoder on the CPU:
 * each call runs only the tokens the caches have not seen (the prompt, then one token), and
 * brings back one row of logits. The caches (f32 keys after rope and values of every block,
 * maxTokens positions) and the rope tables of those positions are allocated once here; the
 * model's buffers must hold the longest single step (the prompt): DeviceModel(src, 1, P).
 */
export class DeviceKvDecoder {
  readonly cfg: ModelConfig;
  private readonly mem = new DeviceAllocations();
  private readonly caches: KvCache<DeviceArray>[] = [];
  /** The ids whose keys and values are cached, in order. */
  private readonly seen: number[] = [];
  private readonly logits: Float32Array; // (V)

  constructor(
    readonly model: DeviceModel,
    /** The most positions the sequence may reach (prompt plus new tokens). */
    readonly maxTokens: number,
  ) {
    if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) throw new RangeError(`DeviceKvDecoder: maxTokens must be an integer >= 1, got ${maxTokens}`);
    const cfg = (this.cfg = model.cfg);
    const perCache = maxTokens * cfg.numKvHeads * cfg.headDim;
    try {
      const rope = ropeTables(cfg, 0, maxTokens);
      const cos = this.mem.upload(rope.cos.f32), sin = this.mem.upload(rope.sin.f32);
      for (let l = 0; l < cfg.numLayers; l++) this.caches.push({ k: this.mem.alloc('f32', perCache), v: this.mem.alloc('f32', perCache), cos, sin });
    } catch (e) {
      this.mem.free();
      throw e;
    }
    this.logits = new Float32Array(cfg.vocabSize);
  }

  /**
   * Logits (V) of the token after `ids`, which must extend the ids of the previous call. The
   * array is reused: it holds these logits until the next call.
   */
  nextTokenLogits(ids: Int32Array): Float32Array {
    const pos = cachedPrefixLength('DeviceKvDecoder', this.seen, ids, this.maxTokens);
    this.model.cachedNextTokenLogits(ids.subarray(pos), this.caches, pos, this.logits);
    for (let i = pos; i < ids.length; i++) this.seen.push(ids[i]!);
    return this.logits;
  }

  free(): void {
    this.mem.free();
  }
}
