// A block's linears over packed low-bit weights (LinearImpl), written once over the Backend:
// quantized evaluation and generation run them forward, E2E-QP also backward, where each
// layer's weight gradient goes at once into the gradient of its step sizes. The integers and
// zero points stay packed on the backend (uploadPackedBlock: as they are on the CPU, uploaded
// once on CUDA); only the f32 step sizes are trained. Biases are frozen.
import type { Tensor } from '../engine/tensor.js';
import type { Backend, PackedArray } from '../backend/backend.js';
import { cpuBackend } from '../backend/cpu.js';
import type { ModelConfig } from './config.js';
import { BIAS_OF, BLOCK_LINEARS, BlockArena, uploadBlockParams, type BlockLinear, type BlockParams, type LinearImpl } from './block.js';
import type { PackedBlock } from './quantized.js';

/** A packed block on a backend: norms and biases in params, each linear's packed integers and step sizes (O, I/G). */
export interface PackedLinearBlock<A> {
  params: Partial<BlockParams<A>>;
  weights: Record<BlockLinear, PackedArray>;
  scales: Record<BlockLinear, A>;
}

/** Where packed linears compute: the backend, its weight tiles (Backend.packedTiles) and bf16 GEMM scratch. */
export interface PackedLinearScratch<A> {
  be: Backend<A>;
  tile: A | null;
  dwTile: A | null;
  lowp: unknown;
}

const ON_CPU: PackedLinearScratch<Tensor> = { be: cpuBackend, tile: null, dwTile: null, lowp: null };

/**
 * Linears over the packed weights of b; step-size gradients accumulate into dscales when given
 * (else the backward forms dx only). Without `scratch` they run on the CPU over a host PackedBlock.
 */
export function packedLinears(b: PackedBlock, dscales?: Record<BlockLinear, Tensor> | null): LinearImpl<Tensor>;
export function packedLinears<A>(b: PackedLinearBlock<A>, dscales: Record<BlockLinear, A> | null, scratch: PackedLinearScratch<A>): LinearImpl<A>;
export function packedLinears<A>(
  b: PackedLinearBlock<A>,
  dscales: Record<BlockLinear, A> | null = null,
  scratch: PackedLinearScratch<A> = ON_CPU as unknown as PackedLinearScratch<A>,
): LinearImpl<A> {
  const { be, tile, dwTile, lowp } = scratch;
  return {
    bf16Inputs: lowp !== null,
    forward(out, x, key, N) {
      be.packedLinearForward(out, x, b.weights[key], b.scales[key], b.params[BIAS_OF[key]], N, tile, lowp);
    },
    backward(dx, dout, x, key, N, accumulateDx) {
      be.packedLinearBackward(dx, dscales ? dscales[key] : null, dout, x, b.weights[key], b.scales[key], N, accumulateDx, tile, dwTile, lowp);
    },
  };
}

/**
 * Puts host packed block b on backend `be`: its norms and biases into an arena without dense
 * linears, and the packed integers and zero points of every linear, all owned by `mem`. Each
 * linear's step sizes go where `scales` puts them: an upload of their own for evaluation, a
 * view into the trained step-size arena for E2E-QP.
 */
export function uploadPackedBlock<A>(
  be: Backend<A>,
  cfg: ModelConfig,
  b: PackedBlock,
  mem: { adopt<T extends { free(): void }>(owned: T): T },
  scales: (key: BlockLinear, host: Tensor) => A,
): { arena: BlockArena<A>; block: PackedLinearBlock<A> } {
  const arena = mem.adopt(new BlockArena(be, cfg, { linears: false }));
  uploadBlockParams(be, arena.params, b.params);
  const block: PackedLinearBlock<A> = { params: arena.params, weights: {} as Record<BlockLinear, PackedArray>, scales: {} as Record<BlockLinear, A> };
  for (const [key] of BLOCK_LINEARS) {
    block.weights[key] = mem.adopt(be.uploadPacked(b.weights[key])).value;
    block.scales[key] = scales(key, b.scales[key]);
  }
  return { arena, block };
}
