// Whole-model forward for evaluation and generation: embedding → blocks → final RMSNorm →
// lm_head, in f32. Two ways to walk it:
// - LoadedModel keeps every block in memory (generation, small models); KvDecoder runs it
//   one new token at a time over a key/value cache (generation);
// - forwardLayerwise streams one block at a time over a batch of sequences held as hidden
//   states (evaluation of large models on a machine with less RAM than the model).
// Quantized checkpoints run on their packed weights (never dequantized as a whole).
import { Tensor } from '../engine/tensor.js';
import type { ModelConfig } from './config.js';
import { allocBlockParams, blockForward, BlockWorkspace, denseLinears, type BlockParams, type KvCache, type LinearImpl } from './block.js';
import { loadPackedBlock, packedLinears } from './quantized.js';
import { ropeTables } from './rope.js';
import { cpuBackend } from '../backend/cpu.js';
import { embeddingForward } from '../ops/embedding.js';
import { rmsnormForward } from '../ops/rmsnorm.js';
import { linearForward } from '../ops/linear.js';
import type { WeightSource } from './weights.js';

export class LoadedModel {
  private constructor(
    readonly cfg: ModelConfig,
    readonly embedding: Tensor, // (V, C)
    readonly blocks: { params: BlockParams; lin: LinearImpl }[],
    readonly finalNorm: Tensor, // (C)
    readonly lmHead: Tensor, // (V, C)
  ) {}

  static load(src: WeightSource, onBlock?: (i: number) => void): LoadedModel {
    const cfg = src.cfg;
    const embedding = src.embedding();
    const blocks: { params: BlockParams; lin: LinearImpl }[] = [];
    for (let i = 0; i < cfg.numLayers; i++) {
      blocks.push(loadBlockForCompute(src, i));
      onBlock?.(i);
    }
    return new LoadedModel(cfg, embedding, blocks, src.finalNorm(), src.lmHead(embedding));
  }

  /** logits (B*T, V) for token ids (B, T). */
  forward(ids: Int32Array, B: number, T: number): Tensor {
    const cfg = this.cfg;
    const C = cfg.hiddenSize;
    const N = B * T;
    const ws = new BlockWorkspace(cpuBackend, cfg, B, T, { training: false });
    let x = Tensor.zeros([B, T, C]);
    let y = Tensor.zeros([B, T, C]);
    embeddingForward(x.view([N, C]), Tensor.fromI32(ids), this.embedding);
    for (const b of this.blocks) {
      blockForward(cfg, b.params, ws, x, y, b.lin);
      [x, y] = [y, x];
    }
    return headLogits(cfg, x.view([N, C]), this.finalNorm, this.lmHead);
  }

  /** Logits (V) of the token after the prefix `ids`: the whole prefix is run again. */
  nextTokenLogits(ids: Int32Array): Float32Array {
    const T = ids.length;
    const V = this.cfg.vocabSize;
    return this.forward(ids, 1, T).f32.subarray((T - 1) * V, T * V);
  }
}

/** Buffers of headLogits for N rows. */
export interface HeadBuffers {
  normed: Tensor; // (N, C)
  rstd: Tensor; // (N)
  logits: Tensor; // (N, V)
}

/** New headLogits buffers for N rows. */
export function headBuffers(cfg: ModelConfig, N: number): HeadBuffers {
  return { normed: Tensor.zeros([N, cfg.hiddenSize]), rstd: Tensor.zeros([N]), logits: Tensor.zeros([N, cfg.vocabSize]) };
}

/** logits (N, V) = lm_head(rmsnorm(x (N, C))), into `out` when given (else new buffers). */
export function headLogits(cfg: ModelConfig, x: Tensor, finalNorm: Tensor, lmHead: Tensor, out = headBuffers(cfg, x.dim(0))): Tensor {
  rmsnormForward(out.normed, out.rstd, x, finalNorm, cfg.rmsNormEps);
  linearForward(out.logits, out.normed, lmHead);
  return out.logits;
}

/**
 * Incremental decoding of one sequence on the CPU with a key/value cache per block: each
 * nextTokenLogits call runs only the tokens the cache has not seen (the whole prompt on the
 * first call, then one token), so n tokens after a prompt of P cost P + n token forwards
 * instead of about n·(P + n/2). The logits equal LoadedModel.nextTokenLogits's up to the
 * summation order of attention over a longer key range.
 */
export class KvDecoder {
  readonly cfg: ModelConfig;
  private readonly caches: KvCache[];
  /** The ids whose keys and values are cached, in order. */
  private readonly seen: number[] = [];
  /** Workspace and input/output hidden states per number of new tokens (the prompt's, then 1). */
  private readonly runs = new Map<number, { ws: BlockWorkspace<Tensor>; x: Tensor; y: Tensor }>();
  private readonly head: HeadBuffers;

  constructor(
    readonly model: LoadedModel,
    /** The most positions the sequence may reach (prompt plus new tokens). */
    readonly maxTokens: number,
  ) {
    if (!(Number.isInteger(maxTokens) && maxTokens >= 1)) throw new RangeError(`KvDecoder: maxTokens must be an integer >= 1, got ${maxTokens}`);
    this.cfg = model.cfg;
    const { numKvHeads: Hkv, headDim: D } = this.cfg;
    const rope = ropeTables(this.cfg, 0, maxTokens);
    this.caches = model.blocks.map(() => ({ k: Tensor.zeros([maxTokens, Hkv, D]), v: Tensor.zeros([maxTokens, Hkv, D]), cos: rope.cos, sin: rope.sin }));
    this.head = headBuffers(this.cfg, 1);
  }

  /**
   * Logits (V) of the token after `ids`, which must extend the ids of the previous call. The
   * array is reused: it holds these logits until the next call.
   */
  nextTokenLogits(ids: Int32Array): Float32Array {
    const pos = cachedPrefixLength('KvDecoder', this.seen, ids, this.maxTokens);
    const T = ids.length - pos;
    const cfg = this.cfg;
    const C = cfg.hiddenSize;
    const run = this.run(T);
    let { x, y } = run;
    embeddingForward(x.view([T, C]), Tensor.fromI32(ids.subarray(pos)), this.model.embedding);
    this.model.blocks.forEach((b, l) => {
      blockForward(cfg, b.params, run.ws, x, y, b.lin, { cache: this.caches[l]!, pos });
      [x, y] = [y, x];
    });
    for (let i = pos; i < ids.length; i++) this.seen.push(ids[i]!);
    return headLogits(cfg, x.view([T, C]).rows(T - 1, 1), this.model.finalNorm, this.model.lmHead, this.head).f32;
  }

  private run(T: number): { ws: BlockWorkspace<Tensor>; x: Tensor; y: Tensor } {
    let r = this.runs.get(T);
    if (!r) {
      const C = this.cfg.hiddenSize;
      const ws = new BlockWorkspace(cpuBackend, this.cfg, 1, T, { training: false, cacheOnly: true });
      r = { ws, x: Tensor.zeros([1, T, C]), y: Tensor.zeros([1, T, C]) };
      this.runs.set(T, r);
    }
    return r;
  }
}

/**
 * For a decoder over a kv cache (KvDecoder here, DeviceKvDecoder on CUDA): checks that `ids`
 * extends the cached ids `seen` by at least one token and fits `maxTokens`, and returns the
 * number of cached positions (where the new tokens start). Errors name `what`.
 */
export function cachedPrefixLength(what: string, seen: readonly number[], ids: Int32Array, maxTokens: number): number {
  const pos = seen.length;
  for (let i = 0; i < pos; i++) {
    if (ids[i] !== seen[i]) throw new Error(`${what}: ids differ from the cached prefix at position ${i}`);
  }
  if (ids.length <= pos) throw new RangeError(`${what}: no new token after the ${pos} cached ones`);
  if (ids.length > maxTokens) throw new RangeError(`${what}: ${ids.length} tokens exceed the cache's ${maxTokens}`);
  return pos;
}

/**
 * Runs the embedding and every block over `count` sequences of T tokens, one block at a time,
 * `batch` sequences per step. Returns the final hidden states (count*T, C) before the final norm.
 */
export function forwardLayerwise(
  src: WeightSource,
  ids: Int32Array, // (count, T)
  count: number,
  T: number,
  batch: number,
  onStep?: (done: number, total: number) => void,
): Tensor {
  const cfg = src.cfg;
  const C = cfg.hiddenSize;
  const hidden = Tensor.zeros([count * T, C]);
  const emb = src.embedding();
  embeddingForward(hidden, Tensor.fromI32(ids.subarray(0, count * T)), emb);
  const dense = src.quant ? null : allocBlockParams(cfg).params;
  const wsFull = new BlockWorkspace(cpuBackend, cfg, batch, T, { training: false });
  const rem = count % batch;
  const wsRem = rem ? new BlockWorkspace(cpuBackend, cfg, rem, T, { training: false }) : null;
  const out = Tensor.zeros([batch, T, C]);
  const total = cfg.numLayers * Math.ceil(count / batch);
  let done = 0;
  for (let l = 0; l < cfg.numLayers; l++) {
    let params: BlockParams;
    let lin: LinearImpl;
    if (dense) {
      src.loadBlock(l, dense);
      params = dense;
      lin = denseLinears(cpuBackend, cfg, dense);
    } else {
      ({ params, lin } = loadBlockForCompute(src, l));
    }
    for (let s = 0; s < count; s += batch) {
      const b = Math.min(batch, count - s);
      const ws = b === batch ? wsFull : wsRem!;
      const x = hidden.rows(s * T, b * T).view([b, T, C]);
      const y = b === batch ? out : out.rows(0, b);
      blockForward(cfg, params, ws, x, y.view([b, T, C]), lin);
      x.f32.set(y.f32.subarray(0, b * T * C));
      onStep?.(++done, total);
    }
  }
  return hidden;
}

/** Block i ready to compute: dense f32 for a full-precision checkpoint, packed for a quantized one. */
export function loadBlockForCompute(src: WeightSource, i: number): { params: BlockParams; lin: LinearImpl } {
  if (src.quant) {
    const b = loadPackedBlock(src, i);
    return { params: b.params, lin: packedLinears(b) };
  }
  const { params } = allocBlockParams(src.cfg);
  src.loadBlock(i, params);
  return { params, lin: denseLinears(cpuBackend, src.cfg, params) };
}
