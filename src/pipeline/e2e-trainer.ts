// E2E-QP optimizer steps over a Backend (the CPU, or CUDA): the arithmetic runE2eQp
// (src/pipeline/e2e-qp.ts) drives. The packed model is put on the backend once: per block the
// GPTQ integers and zero points (kept packed), norms and biases; embeddings, final norm and
// lm_head in f32 (lm_head in bf16 with bf16 GEMMs). The trainable step sizes, their gradients
// and AdamW's moments are four backend arrays laid out exactly as the host ScaleState, so a
// save or the final write is one download each and a resume one upload, and a state saved on
// one device resumes on the other.
//
// A micro-batch: embedding → blocks (each block's input kept: L+1 hidden states) → final norm →
// lm_head → cross-entropy forward and backward in one pass → back through the head, then block
// by block in reverse: recompute the block's activations from its saved input and run its
// backward, whose packed linears fold each layer's weight gradient at once into the step sizes'
// gradient (on the CPU inside the fused kernel, tile by tile; on CUDA through one shared tile).
// Memory is bounded by one block's activations plus the L+1 hidden states; no dequantized copy
// of the model exists.
//
// The backend work of a micro-batch is one captured step (Backend.stepCapture: a CUDA graph
// captured on the second micro-batch and replayed from then on; a plain call on the CPU):
// token ids, labels and the loss scale are written before it and the per-token losses read
// after it. Ids and labels are checked on the host, where they come from.
import { BackendAllocations, type Backend, type Precision, type StepCapture } from '../backend/backend.js';
import type { ModelConfig } from '../model/config.js';
import { blockBackward, blockForward, BlockArena, BlockWorkspace, largestLinearSize, linearRowWidth, type BlockLinear, type BlockParams, type LinearImpl } from '../model/block.js';
import { packedLinears, uploadPackedBlock } from '../model/packed-linears.js';
import type { PackedModel } from '../model/quantized.js';
import type { AdamWHyper } from '../ops/adamw.js';
import { IGNORE_INDEX } from '../ops/crossentropy.js';
import type { ScaleState } from './e2e-qp.js';

interface TrainedBlock<A> {
  params: BlockParams<A>; // norms and biases (no dense linears)
  lin: LinearImpl<A>; // packed linears with step-size gradients
}

export class E2eTrainer<A> {
  private readonly cfg: ModelConfig;
  private readonly mem: BackendAllocations<A>; // every allocation of the trainer
  private readonly blocks: TrainedBlock<A>[] = [];
  // step sizes, gradients and moments: the host ScaleState's layout
  private readonly params: A;
  /** Step-size gradients (ScaleState layout): accumulated over micro-batches since zeroGrads. */
  readonly grads: A;
  private readonly m: A;
  private readonly v: A;
  private readonly lowp: unknown = null; // bf16 GEMM scratch (Backend.linearScratch)
  private readonly embedding: A; // (V, C)
  private readonly lmHead: A; // (V, C), bf16 with bf16 GEMMs
  private readonly finalNorm: A; // (C)
  private readonly dFinalNorm: A; // (C) not trained: a sink for the norm backward
  private readonly gNorms: BlockArena<A>; // the same for the blocks' norms and biases
  private readonly ws: BlockWorkspace<A>;
  private readonly hidden: A[]; // L+1 × (mb, T, C): every block's input, and the last output
  private readonly scratch: A; // (mb, T, C)
  private readonly dH: A; // (mb, T, C)
  private readonly dX: A; // (mb, T, C)
  private readonly normed: A; // (N, C)
  private readonly rstd: A; // (N)
  private readonly logits: A; // (N, V), then its gradient in place
  private readonly losses: A; // (N)
  private readonly lossesHost: Float32Array; // (N)
  private readonly dNormed: A; // (N, C)
  private readonly ids: A; // (N) i32
  private readonly labels: A; // (N) i32
  private readonly sumSquaresScratch: unknown;
  private readonly adamwScalars: unknown; // AdamW's per-step scalars
  private readonly lossScale: unknown; // the micro-batch's gradient scale
  /** A micro-batch's backend work, captured once and replayed (CUDA graphs). */
  readonly capture: StepCapture;

  constructor(
    readonly be: Backend<A>,
    model: PackedModel,
    private readonly state: ScaleState,
    readonly mb: number,
    readonly T: number,
    precision: Precision = 'f32',
  ) {
    const cfg = (this.cfg = model.cfg);
    const C = cfg.hiddenSize;
    const V = cfg.vocabSize;
    const N = mb * T;
    const L = cfg.numLayers;
    const mem = (this.mem = new BackendAllocations(be));
    this.capture = be.stepCapture('the E2E-QP micro-batch');
    try {
      const n = state.params.buffer.length;
      this.params = mem.alloc('f32', n);
      this.grads = mem.alloc('f32', n);
      this.m = mem.alloc('f32', n);
      this.v = mem.alloc('f32', n);
      const largest = largestLinearSize(cfg);
      const tiles = mem.adopt(be.packedTiles(largest, { precision, training: true }));
      if (precision === 'bf16') {
        // GEMM inputs up to the widest activation and dlogits (N, V); weights up to the largest
        // linear (lm_head is kept in bf16)
        const rows = N * linearRowWidth(cfg);
        this.lowp = mem.adopt(be.linearScratch({ x: rows, dout: Math.max(rows, N * V), w: largest })).value;
      }
      // the blocks, their step sizes and gradients as views into the arrays, in ScaleState order
      let at = 0;
      for (const b of model.blocks) {
        const dscales = {} as Record<BlockLinear, A>;
        const { arena, block } = uploadPackedBlock(be, cfg, b, mem, (key, host) => {
          const view = be.view(this.params, at, host.size);
          dscales[key] = be.view(this.grads, at, host.size);
          at += host.size;
          return view;
        });
        this.blocks.push({ params: arena.params, lin: packedLinears(block, dscales, { be, tile: tiles.w, dwTile: tiles.dw, lowp: this.lowp }) });
      }
      if (at !== n) throw new Error(`internal: step sizes laid out over ${at} of ${n} elements`);
      this.embedding = mem.share(model.embedding.f32);
      const tied = model.lmHead === model.embedding && precision === 'f32';
      this.lmHead = tied ? this.embedding : mem.own(be.uploadFrozen(model.lmHead.f32, precision)); // frozen: bf16 with bf16 GEMMs
      this.finalNorm = mem.share(model.finalNorm.f32);
      this.dFinalNorm = mem.alloc('f32', C);
      this.gNorms = mem.adopt(new BlockArena(be, cfg, { linears: false }));
      this.ws = mem.adopt(new BlockWorkspace(be, cfg, mb, T, { precision }));
      this.hidden = Array.from({ length: L + 1 }, () => mem.alloc('f32', N * C));
      this.scratch = mem.alloc('f32', N * C);
      this.dH = mem.alloc('f32', N * C);
      this.dX = mem.alloc('f32', N * C);
      this.normed = mem.alloc('f32', N * C);
      this.rstd = mem.alloc('f32', N);
      this.logits = mem.alloc('f32', N * V);
      this.losses = mem.alloc('f32', N);
      this.lossesHost = new Float32Array(N);
      this.dNormed = mem.alloc('f32', N * C);
      this.ids = mem.alloc('i32', N);
      this.labels = mem.alloc('i32', N);
      this.sumSquaresScratch = mem.adopt(be.sumSquaresScratch()).value;
      this.adamwScalars = mem.adopt(be.adamwScalars()).value;
      this.lossScale = mem.adopt(be.lossScale()).value;
    } catch (e) {
      this.free();
      throw e;
    }
  }

  zeroGrads(): void {
    this.be.zero(this.grads);
  }

  /**
   * Mean next-token loss of one micro-batch (ids, labels: (mb, T); label -100 = no loss);
   * step-size gradients of loss / accum accumulate into grads.
   */
  microStep(ids: Int32Array, labels: Int32Array, accum: number): number {
    const { be, cfg, mb, T } = this;
    const L = cfg.numLayers;
    const C = cfg.hiddenSize;
    const V = cfg.vocabSize;
    const N = mb * T;
    be.checkTrainingTokens(ids, labels, V);
    let valid = 0;
    for (const label of labels) if (label !== IGNORE_INDEX) valid++;
    be.upload(this.ids, ids);
    be.upload(this.labels, labels);
    // loss = mean over the micro-batch's predicted tokens, averaged over accumulated micro-batches
    be.writeLossScale(this.lossScale, valid > 0 ? 1 / (valid * accum) : 0);
    this.capture.capture('micro-batch', () => {
      const h = this.hidden;
      const unchecked = { check: false }; // checked above
      be.embeddingForward(h[0]!, this.ids, this.embedding, N, V, C, unchecked);
      for (let l = 0; l < L; l++) blockForward(cfg, this.blocks[l]!.params, this.ws, h[l]!, h[l + 1]!, this.blocks[l]!.lin);
      be.rmsnormForward(this.normed, this.rstd, h[L]!, this.finalNorm, N, C, cfg.rmsNormEps);
      const head = { N, O: V, I: C };
      be.linearForward(this.logits, this.normed, this.lmHead, null, head, this.lowp);
      be.crossEntropyForwardBackward(this.losses, this.logits, this.logits, this.labels, N, V, this.lossScale, unchecked);
      // dnormed (N, C) = dlogits (N, V) @ lm_head (V, C)
      be.linearBackward(this.dNormed, null, null, this.logits, this.normed, this.lmHead, head, false, this.lowp);
      let dH = this.dH, dX = this.dX;
      be.zero(dH);
      be.rmsnormBackward(dH, this.dFinalNorm, this.dNormed, h[L]!, this.finalNorm, this.rstd, N, C);
      for (let l = L - 1; l >= 0; l--) {
        const b = this.blocks[l]!;
        blockForward(cfg, b.params, this.ws, h[l]!, this.scratch, b.lin); // recompute activations
        blockBackward(cfg, b.params, this.gNorms.params, this.ws, h[l]!, dH, l > 0 ? dX : null, b.lin);
        [dH, dX] = [dX, dH];
      }
    });
    const losses = this.lossesHost;
    be.download(this.losses, losses);
    let sum = 0;
    for (let t = 0; t < N; t++) sum += losses[t]!;
    return valid > 0 ? sum / valid : 0;
  }

  /** The global gradient norm; gradients are then scaled to at most maxNorm when maxNorm > 0 (torch.nn.utils.clip_grad_norm_). */
  clip(maxNorm: number): number {
    const norm = Math.sqrt(this.be.sumSquares(this.grads, this.sumSquaresScratch));
    if (maxNorm > 0) {
      const coef = Math.min(1, maxNorm / (norm + 1e-6));
      if (coef !== 1) this.be.scale(this.grads, this.grads, coef);
    }
    return norm;
  }

  adamw(h: AdamWHyper): void {
    this.be.writeAdamWScalars(this.adamwScalars, h);
    this.be.adamwStep(this.params, this.grads, this.m, this.v, this.adamwScalars);
  }

  /** The state to train from: the host ScaleState's step sizes and moments (loaded, or the checkpoint's). */
  fromHost(): void {
    const { be, state } = this;
    be.upload(this.params, state.params.buffer);
    be.upload(this.m, state.m.buffer);
    be.upload(this.v, state.v.buffer);
  }

  /** The trained step sizes and moments into the host ScaleState (before a save and at the end). */
  toHost(): void {
    const { be, state } = this;
    be.download(this.params, state.params.buffer);
    be.download(this.m, state.m.buffer);
    be.download(this.v, state.v.buffer);
  }

  free(): void {
    this.capture.free();
    this.mem.free();
  }
}
