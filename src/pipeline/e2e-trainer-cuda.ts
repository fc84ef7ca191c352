// E2E-QP optimizer steps on CUDA (the E2eStepper of src/pipeline/e2e-qp.ts; the CPU twin is
// E2eTrainer there). The packed model lives on the device for the whole run: per block the
// GPTQ integers and zero points (uploaded once), norms and biases; embeddings, final norm and
// lm_head in f32. The trainable step sizes, their gradients and AdamW moments are four device
// arenas laid out exactly as the host ScaleState, so a save or the final write is one download
// each and a resume one upload.
//
// A micro-batch: embedding → blocks (each block's input kept: L+1 hidden states) → final norm →
// lm_head → cross-entropy forward and backward in one pass → back through the head, then block
// by block in reverse: recompute the block's activations from its saved input and run its
// backward, whose packed linears form each layer's weight gradient in one shared tile and fold
// it at once into the step sizes' gradient. Memory is bounded by one block's activations plus
// the L+1 hidden states; no dequantized copy of the model exists (one weight tile at a time).
//
// The device work of a micro-batch is one CUDA graph, captured on the second micro-batch and
// replayed from then on (CudaStepGraphs): token ids, labels and the loss scale are written to
// device memory before it, and the per-token losses are read after it. Ids and labels are
// checked on the host, where they come from.
import { CudaStepGraphs, DeviceAllocations, deviceView, downloadDevice, uploadDevice, zeroDevice, type DeviceArray } from '../engine/cuda.js';
import type { ModelConfig } from '../model/config.js';
import { blockBackward, blockForward, BlockArena, BlockWorkspace, largestLinearSize, linearRowWidth, type BlockLinear, type LinearImpl } from '../model/block.js';
import { cudaBackend } from '../backend/cuda.js';
import { packedLinears, uploadPackedBlock } from '../model/packed-linears.js';
import type { PackedModel } from '../model/quantized.js';
import { linearBackwardCuda, linearForwardCuda, uploadFrozenWeight, type LowPrecisionScratch } from '../ops/cuda/linear.js';
import { embeddingForwardCuda } from '../ops/cuda/embedding.js';
import { rmsnormBackwardCuda, rmsnormForwardCuda } from '../ops/cuda/rmsnorm.js';
import { allocLossScale, crossEntropyForwardBackwardCuda, writeLossScale } from '../ops/cuda/crossentropy.js';
import { scaleCuda } from '../ops/cuda/elementwise.js';
import { ADAMW_SCALARS, adamwStepCuda } from '../ops/cuda/adamw.js';
import { allocReducePartials, sumSquaresCuda } from '../ops/cuda/reduce.js';
import type { AdamWHyper } from '../ops/adamw.js';
import { embeddingIdError } from '../ops/embedding.js';
import { crossEntropyTargetError, IGNORE_INDEX } from '../ops/crossentropy.js';
import type { E2eStepper, ScaleState } from './e2e-qp.js';

interface BlockOnDevice {
  arena: BlockArena<DeviceArray>; // norms and biases
  lin: LinearImpl<DeviceArray>; // packed linears with step-size gradients
}

export class E2eStepperCuda implements E2eStepper {
  readonly device = 'cuda' as const;
  private readonly cfg: ModelConfig;
  private readonly mem = new DeviceAllocations(); // every device allocation of the stepper
  private readonly blocks: BlockOnDevice[] = [];
  // step sizes, gradients and moments: the host ScaleState's layout
  private readonly params: DeviceArray;
  private readonly grads: DeviceArray;
  private readonly m: DeviceArray;
  private readonly v: DeviceArray;
  private readonly embedding: DeviceArray; // (V, C)
  private readonly lmHead: DeviceArray; // (V, C), bf16 with bf16 GEMMs
  private readonly finalNorm: DeviceArray; // (C)
  private readonly dFinalNorm: DeviceArray; // (C) not trained: a sink for the norm backward
  private readonly gNorms: BlockArena<DeviceArray>; // the same for the blocks' norms and biases
  private readonly ws: BlockWorkspace<DeviceArray>;
  private readonly hidden: DeviceArray[]; // L+1 × (mb, T, C): every block's input, and the last output
  private readonly scratch: DeviceArray; // (mb, T, C)
  private readonly dH: DeviceArray; // (mb, T, C)
  private readonly dX: DeviceArray; // (mb, T, C)
  private readonly normed: DeviceArray; // (N, C)
  private readonly rstd: DeviceArray; // (N)
  private readonly logits: DeviceArray; // (N, V), then its gradient in place
  private readonly losses: DeviceArray; // (N)
  private readonly dNormed: DeviceArray; // (N, C)
  private readonly ids: DeviceArray; // (N) i32
  private readonly labels: DeviceArray; // (N) i32
  private readonly partials: DeviceArray;
  private readonly adamwScalars: DeviceArray; // AdamW's per-step scalars
  private readonly lossScale: DeviceArray; // the micro-batch's gradient scale, one f64
  /** A micro-batch's device work, replayed from a CUDA graph. */
  readonly graphs = new CudaStepGraphs('the E2E-QP micro-batch');
  private readonly lowp: LowPrecisionScratch | null = null;

  constructor(
    model: PackedModel,
    private readonly state: ScaleState,
    readonly mb: number,
    readonly T: number,
    precision: 'f32' | 'bf16',
  ) {
    const cfg = (this.cfg = model.cfg);
    const C = cfg.hiddenSize;
    const V = cfg.vocabSize;
    const N = mb * T;
    const L = cfg.numLayers;
    const mem = this.mem;
    try {
      const n = state.params.buffer.length;
      this.params = mem.alloc('f32', n);
      this.grads = mem.alloc('f32', n);
      this.m = mem.alloc('f32', n);
      this.v = mem.alloc('f32', n);
      const largest = largestLinearSize(cfg);
      const wTile = mem.alloc('f32', precision === 'f32' ? largest : 0); // bf16: lowp.wb holds the weight
      const dwTile = mem.alloc('f32', largest);
      if (precision === 'bf16') {
        // GEMM inputs up to the widest activation and dlogits (N, V); weights up to the largest
        // linear (lm_head is kept in bf16)
        this.lowp = {
          xb: mem.alloc('bf16', N * linearRowWidth(cfg)),
          doutb: mem.alloc('bf16', Math.max(N * linearRowWidth(cfg), N * V)),
          wb: mem.alloc('bf16', largest),
        };
      }
      // the blocks, their step sizes and gradients as views into the arenas, in ScaleState order
      let at = 0;
      for (const b of model.blocks) {
        const dscales = {} as Record<BlockLinear, DeviceArray>;
        const { arena, block } = uploadPackedBlock(cudaBackend, cfg, b, mem, (key, host) => {
          const view = deviceView(this.params, at, host.size);
          dscales[key] = deviceView(this.grads, at, host.size);
          at += host.size;
          return view;
        });
        this.blocks.push({ arena, lin: packedLinears(block, dscales, { be: cudaBackend, tile: wTile, dwTile, lowp: this.lowp }) });
      }
      if (at !== n) throw new Error(`internal: step sizes laid out over ${at} of ${n} elements`);
      this.embedding = mem.upload(model.embedding.f32);
      const tied = model.lmHead === model.embedding && precision === 'f32';
      this.lmHead = tied ? this.embedding : uploadFrozenWeight(mem, model.lmHead.f32, precision); // frozen: bf16 with bf16 GEMMs
      this.finalNorm = mem.upload(model.finalNorm.f32);
      this.dFinalNorm = mem.alloc('f32', C);
      this.gNorms = mem.adopt(new BlockArena(cudaBackend, cfg, { linears: false }));
      this.ws = mem.adopt(new BlockWorkspace(cudaBackend, cfg, mb, T, { precision }));
      this.hidden = Array.from({ length: L + 1 }, () => mem.alloc('f32', N * C));
      this.scratch = mem.alloc('f32', N * C);
      this.dH = mem.alloc('f32', N * C);
      this.dX = mem.alloc('f32', N * C);
      this.normed = mem.alloc('f32', N * C);
      this.rstd = mem.alloc('f32', N);
      this.logits = mem.alloc('f32', N * V);
      this.losses = mem.alloc('f32', N);
      this.dNormed = mem.alloc('f32', N * C);
      this.ids = mem.alloc('i32', N);
      this.labels = mem.alloc('i32', N);
      this.partials = mem.adopt(allocReducePartials());
      this.adamwScalars = mem.alloc('f32', ADAMW_SCALARS);
      this.lossScale = mem.adopt(allocLossScale());
    } catch (e) {
      this.free();
      throw e;
    }
  }

  zeroGrads(): void {
    zeroDevice(this.grads);
  }

  microStep(ids: Int32Array, labels: Int32Array, accum: number): number {
    const { cfg, mb, T } = this;
    const L = cfg.numLayers;
    const C = cfg.hiddenSize;
    const V = cfg.vocabSize;
    const N = mb * T;
    let valid = 0;
    for (let t = 0; t < N; t++) {
      const id = ids[t]!, label = labels[t]!;
      // the errors the ops' device checks would raise (skipped in the graph)
      if (!(id >= 0 && id < V)) throw embeddingIdError('embeddingForwardCuda', t, id, V);
      if (label === IGNORE_INDEX) continue;
      if (!(label >= 0 && label < V)) throw crossEntropyTargetError('crossEntropyForwardBackwardCuda', t, label, V);
      valid++;
    }
    uploadDevice(this.ids, ids);
    uploadDevice(this.labels, labels);
    // loss = mean over the micro-batch's predicted tokens, averaged over accumulated micro-batches
    writeLossScale(this.lossScale, valid > 0 ? 1 / (valid * accum) : 0);
    this.graphs.run('micro-batch', () => {
      const h = this.hidden;
      const unchecked = { check: false }; // checked above
      embeddingForwardCuda(h[0]!, this.ids, this.embedding, N, V, C, unchecked);
      for (let l = 0; l < L; l++) blockForward(cfg, this.blocks[l]!.arena.params, this.ws, h[l]!, h[l + 1]!, this.blocks[l]!.lin);
      rmsnormForwardCuda(this.normed, this.rstd, h[L]!, this.finalNorm, N, C, cfg.rmsNormEps);
      linearForwardCuda(this.logits, this.normed, this.lmHead, null, { N, O: V, I: C }, this.lowp);
      crossEntropyForwardBackwardCuda(this.losses, this.logits, this.logits, this.labels, N, V, this.lossScale, unchecked);
      // dnormed (N, C) = dlogits (N, V) @ lm_head (V, C)
      linearBackwardCuda(this.dNormed, null, null, this.logits, this.normed, this.lmHead, { N, O: V, I: C }, false, this.lowp);
      let dH = this.dH, dX = this.dX;
      zeroDevice(dH);
      rmsnormBackwardCuda(dH, this.dFinalNorm, this.dNormed, h[L]!, this.finalNorm, this.rstd, N, C);
      for (let l = L - 1; l >= 0; l--) {
        const b = this.blocks[l]!;
        blockForward(cfg, b.arena.params, this.ws, h[l]!, this.scratch, b.lin); // recompute activations
        blockBackward(cfg, b.arena.params, this.gNorms.params, this.ws, h[l]!, dH, l > 0 ? dX : null, b.lin);
        [dH, dX] = [dX, dH];
      }
    });
    const losses = downloadDevice(this.losses, new Float32Array(N));
    let sum = 0;
    for (let t = 0; t < N; t++) sum += losses[t]!;
    return valid > 0 ? sum / valid : 0;
  }

  clip(maxNorm: number): number {
    const norm = Math.sqrt(sumSquaresCuda(this.grads, this.partials));
    if (maxNorm > 0) {
      // torch.nn.utils.clip_grad_norm_, as the CPU's clipGradNorm
      const coef = Math.min(1, maxNorm / (norm + 1e-6));
      if (coef !== 1) scaleCuda(this.grads, this.grads, coef);
    }
    return norm;
  }

  adamw(h: AdamWHyper): void {
    adamwStepCuda(this.params, this.grads, this.m, this.v, h, this.adamwScalars);
  }

  fromHost(): void {
    uploadDevice(this.params, this.state.params.buffer);
    uploadDevice(this.m, this.state.m.buffer);
    uploadDevice(this.v, this.state.v.buffer);
  }

  toHost(): void {
    downloadDevice(this.params, this.state.params.buffer);
    downloadDevice(this.m, this.state.m.buffer);
    downloadDevice(this.v, this.state.v.buffer);
  }

  free(): void {
    this.graphs.free();
    this.mem.free();
  }
}
