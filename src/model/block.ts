// The Llama-family decoder block (llama, mistral, qwen2, qwen3) as an explicit forward /
// backward pair composed from the engine's ops, in the style of llm.c:
//
//   h   = x + o_proj(attn(rope(qk_norm(q_proj(ln1(x)))), rope(qk_norm(k_proj(ln1(x)))), v_proj(ln1(x))))
//   y   = h + down_proj(silu(gate_proj(ln2(h))) * up_proj(ln2(h)))
//
// Written once against the Backend interface (src/backend/): the same composition runs on the
// CPU (host Tensors, the native addon) and on CUDA (device arrays, NVRTC kernels and cuBLASLt).
// Parameters, gradients and activations are separate structs allocated once by the caller
// (BlockWorkspace holds every activation and scratch buffer for a fixed number of rows), so
// a training step allocates nothing. The block does not know about quantization: Block-AP
// passes fake-quantized weights in (or linears that quantize them) and receives their
// gradients back; E2E-QP and quantized evaluation pass packed linears. For decoding, the
// forward can also append its keys and values to a KvCache and attend over everything cached.
import { Tensor, Arena } from '../engine/tensor.js';
import { linearShape, type ModelConfig } from './config.js';
import { ropeTables } from './rope.js';
import type { AttentionScratch, Backend, LinearDims, Precision } from '../backend/backend.js';

/** Names of a block's parameters (linear weights, biases, norms), in a fixed order. */
export const BLOCK_PARAM_NAMES = [
  'inputNorm',
  'q',
  'qBias',
  'k',
  'kBias',
  'v',
  'vBias',
  'qNorm',
  'kNorm',
  'o',
  'oBias',
  'postNorm',
  'gate',
  'gateBias',
  'up',
  'upBias',
  'down',
  'downBias',
] as const;
export type BlockParamName = (typeof BLOCK_PARAM_NAMES)[number];

/** The linear weights of a block, keyed as in BlockParams, with their HF module names. */
export const BLOCK_LINEARS = [
  ['q', 'self_attn.q_proj'],
  ['k', 'self_attn.k_proj'],
  ['v', 'self_attn.v_proj'],
  ['o', 'self_attn.o_proj'],
  ['gate', 'mlp.gate_proj'],
  ['up', 'mlp.up_proj'],
  ['down', 'mlp.down_proj'],
] as const;
export type BlockLinear = (typeof BLOCK_LINEARS)[number][0];

/** True for the parameter names that are linear weights (BLOCK_LINEARS' keys). */
export function isBlockLinear(name: string): name is BlockLinear {
  return BLOCK_LINEARS.some(([k]) => k === name);
}

/**
 * One block's parameters (or gradients, or anything laid out like them) as arrays of a backend:
 * host Tensors by default; optional entries exist only when the family has them.
 */
export type BlockParams<A = Tensor> = { [K in BlockParamName]?: A } & {
  inputNorm: A; // (C)
  q: A; // (H*D, C)
  k: A; // (Hkv*D, C)
  v: A; // (Hkv*D, C)
  o: A; // (C, H*D)
  postNorm: A; // (C)
  gate: A; // (F, C)
  up: A; // (F, C)
  down: A; // (C, F)
};

/** HF tensor name (relative to `model.layers.{i}.`) of each parameter. */
export const HF_PARAM_NAME: Record<BlockParamName, string> = {
  inputNorm: 'input_layernorm.weight',
  q: 'self_attn.q_proj.weight',
  qBias: 'self_attn.q_proj.bias',
  k: 'self_attn.k_proj.weight',
  kBias: 'self_attn.k_proj.bias',
  v: 'self_attn.v_proj.weight',
  vBias: 'self_attn.v_proj.bias',
  qNorm: 'self_attn.q_norm.weight',
  kNorm: 'self_attn.k_norm.weight',
  o: 'self_attn.o_proj.weight',
  oBias: 'self_attn.o_proj.bias',
  postNorm: 'post_attention_layernorm.weight',
  gate: 'mlp.gate_proj.weight',
  gateBias: 'mlp.gate_proj.bias',
  up: 'mlp.up_proj.weight',
  upBias: 'mlp.up_proj.bias',
  down: 'mlp.down_proj.weight',
  downBias: 'mlp.down_proj.bias',
};

/** (out_features, in_features) of linear `key` (the layout's one home: config.ts linearShape). */
export function linearDims(cfg: ModelConfig, key: BlockLinear): [number, number] {
  return linearShape(cfg, `${key}_proj`);
}

/** Elements of the block's largest linear weight (the size of a one-weight-at-a-time tile). */
export function largestLinearSize(cfg: ModelConfig): number {
  let largest = 0;
  for (const [key] of BLOCK_LINEARS) {
    const [O, I] = linearDims(cfg, key);
    largest = Math.max(largest, O * I);
  }
  return largest;
}

/** Shapes of the parameters this config's blocks have (absent ones omitted). */
export function blockParamShapes(cfg: ModelConfig): Partial<Record<BlockParamName, number[]>> {
  const C = cfg.hiddenSize;
  const F = cfg.intermediateSize;
  const D = cfg.headDim;
  const qd = cfg.numHeads * D;
  const kvd = cfg.numKvHeads * D;
  const s: Partial<Record<BlockParamName, number[]>> = { inputNorm: [C], postNorm: [C] };
  // linear layouts have one home: config.ts linearShape (HF names)
  for (const [key] of BLOCK_LINEARS) s[key] = linearDims(cfg, key);
  if (cfg.qkvBias) {
    s.qBias = [qd];
    s.kBias = [kvd];
    s.vBias = [kvd];
  }
  if (cfg.oBias) s.oBias = [C];
  if (cfg.mlpBias) {
    s.gateBias = [F];
    s.upBias = [F];
    s.downBias = [C];
  }
  if (cfg.qkNorm) {
    s.qNorm = [D];
    s.kNorm = [D];
  }
  return s;
}

/** Total f32 elements of a block's parameters. */
export function blockParamCount(cfg: ModelConfig): number {
  let n = 0;
  for (const shape of Object.values(blockParamShapes(cfg))) n += shape!.reduce((a, b) => a * b, 1);
  return n;
}

/** Allocates a zeroed parameter (or gradient) struct for one block in a single arena. */
export function allocBlockParams(cfg: ModelConfig): { params: BlockParams; arena: Arena } {
  const shapes = blockParamShapes(cfg);
  const arena = new Arena(blockParamCount(cfg));
  const p: Partial<Record<BlockParamName, Tensor>> = {};
  for (const name of BLOCK_PARAM_NAMES) {
    const shape = shapes[name];
    if (shape) p[name] = arena.take(shape);
  }
  return { params: p as BlockParams, arena };
}

/** Each parameter the config has and its elements in a block arena (0 for a linear left out). */
function arenaEntries(cfg: ModelConfig, linears: boolean): [BlockParamName, number][] {
  const shapes = blockParamShapes(cfg);
  const out: [BlockParamName, number][] = [];
  for (const name of BLOCK_PARAM_NAMES) {
    const shape = shapes[name];
    if (shape) out.push([name, !linears && isBlockLinear(name) ? 0 : shape.reduce((a, b) => a * b, 1)]);
  }
  return out;
}

/** Elements of a block arena: every parameter, or (linears false) the norms and biases only. */
export function blockArenaLength(cfg: ModelConfig, linears = true): number {
  return arenaEntries(cfg, linears).reduce((total, [, n]) => total + n, 0);
}

/**
 * The block's parameters as views into `all` (at least blockArenaLength(cfg, linears) elements),
 * in BLOCK_PARAM_NAMES order; with linears false the linears are empty views. Buffers laid out
 * like a parameter arena (gradients, AdamW moments) get their per-parameter views this way.
 */
export function blockParamViews<A>(be: Backend<A>, cfg: ModelConfig, all: A, { linears = true }: { linears?: boolean } = {}): BlockParams<A> {
  const p: Partial<Record<BlockParamName, A>> = {};
  let at = 0;
  for (const [name, n] of arenaEntries(cfg, linears)) {
    p[name] = be.view(all, at, n);
    at += n;
  }
  return p as BlockParams<A>;
}

/**
 * A block's parameters as views into one f32 allocation of a backend, laid out as
 * allocBlockParams. With `linears: false` the linear weights are empty views (a packed block
 * keeps its weights elsewhere) and only norms and biases take memory.
 */
export class BlockArena<A> {
  readonly all: A; // (blockParamCount), or norms and biases only
  readonly params: BlockParams<A>;

  constructor(
    readonly be: Backend<A>,
    cfg: ModelConfig,
    { linears = true }: { linears?: boolean } = {},
  ) {
    this.all = be.alloc('f32', blockArenaLength(cfg, linears));
    this.params = blockParamViews(be, cfg, this.all, { linears });
  }

  zero(): void {
    this.be.zero(this.all);
  }

  free(): void {
    this.be.free(this.all);
  }
}

/** Copies every parameter of host block `src` into block `dst` of backend `be` (same config; empty entries of either side are skipped). */
export function uploadBlockParams<A>(be: Backend<A>, dst: BlockParams<A>, src: BlockParams): void {
  for (const name of BLOCK_PARAM_NAMES) {
    const d = dst[name], s = src[name];
    if (!d !== !s) throw new Error(`uploadBlockParams: parameter ${name} exists on one side only`);
    if (d && s && be.length(d) > 0 && s.size > 0) be.upload(d, s.f32);
  }
}

/** Copies every parameter of block `src` of backend `be` into host block `dst` (same config). */
export function downloadBlockParams<A>(be: Backend<A>, dst: BlockParams, src: BlockParams<A>): void {
  for (const name of BLOCK_PARAM_NAMES) {
    const d = dst[name], s = src[name];
    if (!d !== !s) throw new Error(`downloadBlockParams: parameter ${name} exists on one side only`);
    if (d && s) be.download(s, d.f32);
  }
}

/** The widest activation a linear of this config reads or writes, per row: max(C, F, H·D, Hkv·D). */
export function linearRowWidth(cfg: ModelConfig): number {
  return Math.max(cfg.hiddenSize, cfg.intermediateSize, cfg.numHeads * cfg.headDim, cfg.numKvHeads * cfg.headDim);
}

/**
 * Activations and scratch of one block for B sequences of T tokens (N = B*T rows) on a backend,
 * every f32 buffer carved from one allocation, so a training step allocates nothing.
 *
 * `precision` is that of the GEMMs (attention's included; bf16 on CUDA only): with bf16 the
 * activations only linears read (the two norm outputs and the SwiGLU output) are produced in
 * bf16 in an allocation of their own, and the attention output gets a bf16 copy there for the
 * o linear. `cacheOnly`: the workspace serves only decoding over a kv cache, so the
 * attention path keeps no scratch.
 */
export class BlockWorkspace<A> {
  readonly B: number;
  readonly T: number;
  readonly ln1!: A; // (N, C), bf16 with bf16 GEMMs (read by the q, k, v linears only)
  readonly rstd1!: A; // (N)
  readonly qLin!: A; // (N, H*D) q projection (before qk-norm)
  readonly kLin!: A; // (N, Hkv*D)
  readonly qNormed!: A; // (N, H*D) after qk-norm (aliases qLin without qk-norm)
  readonly kNormed!: A; // (N, Hkv*D)
  readonly qRstd!: A; // (N*H) qk-norm families only
  readonly kRstd!: A; // (N*Hkv)
  readonly qRot!: A; // (B, T, H, D)
  readonly kRot!: A; // (B, T, Hkv, D)
  readonly v!: A; // (B, T, Hkv, D)
  readonly att!: A; // (B, T, H, D)
  /** (B, T, H, D) bf16 rounding of att, the o linear's input, with bf16 GEMMs; else null. */
  readonly attIn: A | null = null;
  readonly lse!: A; // (B, H, T)
  readonly h!: A; // (N, C) residual after attention
  readonly ln2!: A; // (N, C), bf16 with bf16 GEMMs (gate and up only)
  readonly rstd2!: A; // (N)
  readonly gate!: A; // (N, F)
  readonly up!: A; // (N, F)
  readonly act!: A; // (N, F), bf16 with bf16 GEMMs (down only)
  readonly tmpC!: A; // (N, C)
  // backward scratch (empty without training)
  readonly dh!: A; // (N, C)
  readonly dln!: A; // (N, C)
  readonly dAct!: A; // (N, F)
  readonly dGate!: A; // (N, F)
  readonly dUp!: A; // (N, F)
  readonly dAtt!: A; // (B, T, H, D)
  readonly dq!: A; // (B, T, H, D)
  readonly dk!: A; // (B, T, Hkv, D)
  readonly dv!: A; // (B, T, Hkv, D)
  readonly dqLin!: A; // (N, H*D)
  readonly dkLin!: A; // (N, Hkv*D)
  readonly dqNormed!: A; // (N, H*D) qk-norm families only
  readonly dkNormed!: A; // (N, Hkv*D)
  readonly cos!: A; // (T, D/2) rope tables of positions 0 .. T-1
  readonly sin!: A; // (T, D/2)
  /** Scratch of the backend's attention path for this shape (Backend.attentionScratch), or null. */
  readonly attention: AttentionScratch | null;
  private readonly arena: A;
  private readonly lowpArena: A | null; // bf16 ln1, ln2, act, attIn (precision 'bf16')

  constructor(
    readonly be: Backend<A>,
    readonly cfg: ModelConfig,
    B: number,
    T: number,
    { training = true, precision = 'f32', cacheOnly = false }: { training?: boolean; precision?: Precision; cacheOnly?: boolean } = {},
  ) {
    if (precision === 'bf16' && be.name === 'cpu') throw new Error('BlockWorkspace: bf16 GEMMs need CUDA; the CPU computes in f32');
    this.B = B;
    this.T = T;
    const N = B * T;
    const C = cfg.hiddenSize;
    const F = cfg.intermediateSize;
    const H = cfg.numHeads;
    const Hkv = cfg.numKvHeads;
    const D = cfg.headDim;
    const qk = cfg.qkNorm;
    const g = training ? 1 : 0;
    const f = precision === 'bf16' ? 0 : 1; // f32 norm and SwiGLU outputs
    // every f32 buffer in one allocation, carved in declaration order
    const sizes: [string, number][] = [
      ['ln1', f * N * C], ['rstd1', N], ['qLin', N * H * D], ['kLin', N * Hkv * D],
      ['qNormed', qk ? N * H * D : 0], ['kNormed', qk ? N * Hkv * D : 0],
      ['qRstd', qk ? N * H : 0], ['kRstd', qk ? N * Hkv : 0],
      ['qRot', N * H * D], ['kRot', N * Hkv * D], ['v', N * Hkv * D], ['att', N * H * D], ['lse', B * H * T],
      ['h', N * C], ['ln2', f * N * C], ['rstd2', N], ['gate', N * F], ['up', N * F], ['act', f * N * F], ['tmpC', N * C],
      ['dh', g * N * C], ['dln', g * N * C], ['dAct', g * N * F], ['dGate', g * N * F], ['dUp', g * N * F],
      ['dAtt', g * N * H * D], ['dq', g * N * H * D], ['dk', g * N * Hkv * D], ['dv', g * N * Hkv * D],
      ['dqLin', g * N * H * D], ['dkLin', g * N * Hkv * D],
      ['dqNormed', qk ? g * N * H * D : 0], ['dkNormed', qk ? g * N * Hkv * D : 0],
      ['cos', (T * D) / 2], ['sin', (T * D) / 2],
    ];
    this.arena = be.alloc('f32', sizes.reduce((a, [, n]) => a + n, 0));
    const views: Record<string, A> = {};
    let at = 0;
    for (const [name, n] of sizes) {
      views[name] = be.view(this.arena, at, n);
      at += n;
    }
    try {
      this.lowpArena = f ? null : be.alloc('bf16', 2 * N * C + N * F + N * H * D);
    } catch (e) {
      be.free(this.arena);
      throw e;
    }
    if (this.lowpArena) {
      views['ln1'] = be.view(this.lowpArena, 0, N * C);
      views['ln2'] = be.view(this.lowpArena, N * C, N * C);
      views['act'] = be.view(this.lowpArena, 2 * N * C, N * F);
      this.attIn = be.view(this.lowpArena, 2 * N * C + N * F, N * H * D);
    }
    Object.assign(this, views); // every field marked ! above is one of these views
    if (!qk) {
      this.qNormed = this.qLin;
      this.kNormed = this.kLin;
    }
    const rope = ropeTables(cfg, 0, T);
    be.upload(this.cos, rope.cos.f32);
    be.upload(this.sin, rope.sin.f32);
    try {
      this.attention = be.attentionScratch({ B, Tq: T, Tk: T, H, Hkv, D }, { precision, training, cacheOnly });
    } catch (e) {
      be.free(this.arena);
      if (this.lowpArena) be.free(this.lowpArena);
      throw e;
    }
  }

  free(): void {
    this.attention?.free();
    this.be.free(this.arena);
    if (this.lowpArena) this.be.free(this.lowpArena);
  }
}

/**
 * How a block's linear layers compute: dense weights from BlockParams (full precision, and
 * Block-AP's fake-quantized weights), or packed low-bit weights (E2E-QP, quantized eval).
 * Biases are part of the layer.
 */
export interface LinearImpl<A = Tensor> {
  /** Whether the GEMMs take bf16 inputs (then x may be given in bf16, as a bf16 workspace holds it). */
  readonly bf16Inputs: boolean;
  // out (N, O) = x (N, I) Wᵀ + b
  forward(out: A, x: A, key: BlockLinear, N: number): void;
  // dx (N, I) = dout W (overwritten, or accumulated when accumulateDx); parameter gradients accumulate
  backward(dx: A | null, dout: A, x: A, key: BlockLinear, N: number, accumulateDx: boolean): void;
}

/** The bias parameter of each linear. */
export const BIAS_OF: Record<BlockLinear, BlockParamName> = {
  q: 'qBias',
  k: 'kBias',
  v: 'vBias',
  o: 'oBias',
  gate: 'gateBias',
  up: 'upBias',
  down: 'downBias',
};

/**
 * Dense linears reading W and b from p; gradients (when g is given) accumulate into g. With
 * `lowp` scratch (CUDA's LowPrecisionScratch) the GEMMs take bf16 copies of their inputs.
 */
export function denseLinears<A>(be: Backend<A>, cfg: ModelConfig, p: BlockParams<A>, g: BlockParams<A> | null = null, lowp: unknown = null): LinearImpl<A> {
  const dims = {} as Record<BlockLinear, [number, number]>;
  const d = (key: BlockLinear, N: number): LinearDims => {
    const [O, I] = (dims[key] ??= linearDims(cfg, key));
    return { N, O, I };
  };
  return {
    bf16Inputs: lowp !== null,
    forward(out, x, key, N) {
      be.linearForward(out, x, p[key], p[BIAS_OF[key]], d(key, N), lowp);
    },
    backward(dx, dout, x, key, N, accumulateDx) {
      be.linearBackward(dx, g ? g[key] : null, g ? g[BIAS_OF[key]] : null, dout, x, p[key], d(key, N), accumulateDx, lowp);
    },
  };
}

/**
 * One block's keys (after rope) and values for decoding one sequence, and the rope tables of
 * every position the cache can hold: rows [0, pos) hold the positions already run, where pos
 * is what the caller passes to blockForward next. Every block of a model may share one pair
 * of tables.
 */
export interface KvCache<A = Tensor> {
  k: A; // (Tmax, Hkv, D)
  v: A; // (Tmax, Hkv, D)
  cos: A; // (Tmax, D/2) rope tables of positions 0 .. Tmax-1
  sin: A; // (Tmax, D/2)
}

/**
 * y (B, T, C) = block(x (B, T, C)); keeps what the backward needs in ws. y may not alias x.
 * Norms (and, with the default dense linears, weights and biases) come from p.
 * With `kv` (decoding, B = 1; forward only): x holds positions pos .. pos+T-1, which take their
 * rope rows from the cache's tables; their keys and values are written to cache rows
 * [pos, pos+T) and the queries attend over rows [0, pos+T) (the backend's attention without
 * scratch, which takes any key count).
 */
export function blockForward<A>(
  cfg: ModelConfig,
  p: BlockParams<A>,
  ws: BlockWorkspace<A>,
  x: A,
  y: A,
  lin: LinearImpl<A> = denseLinears(ws.be, cfg, p),
  kv?: { cache: KvCache<A>; pos: number },
): void {
  const be = ws.be;
  const { B, T } = ws;
  const N = B * T;
  const C = cfg.hiddenSize;
  const H = cfg.numHeads;
  const Hkv = cfg.numKvHeads;
  const D = cfg.headDim;
  const eps = cfg.rmsNormEps;
  const att = { B, Tq: T, Tk: T, H, Hkv, D };
  const window = cfg.slidingWindow;
  if (be.length(x) !== N * C || be.length(y) !== N * C) {
    throw new RangeError(`blockForward: x and y must hold B·T·C = ${N * C} elements, got ${be.length(x)} and ${be.length(y)}`);
  }
  if (be.dtype(ws.ln1) === 'bf16' && !lin.bf16Inputs) {
    throw new Error('blockForward: the workspace was made for bf16 GEMMs but the linears run f32 GEMMs');
  }

  // attention
  be.rmsnormForward(ws.ln1, ws.rstd1, x, p.inputNorm, N, C, eps);
  lin.forward(ws.qLin, ws.ln1, 'q', N);
  lin.forward(ws.kLin, ws.ln1, 'k', N);
  lin.forward(ws.v, ws.ln1, 'v', N);
  if (cfg.qkNorm) {
    be.rmsnormForward(ws.qNormed, ws.qRstd, ws.qLin, p.qNorm!, N * H, D, eps);
    be.rmsnormForward(ws.kNormed, ws.kRstd, ws.kLin, p.kNorm!, N * Hkv, D, eps);
  }
  if (kv) {
    const { cache, pos } = kv;
    const Tk = pos + T;
    const rowKv = Hkv * D;
    const Tmax = be.length(cache.k) / rowKv;
    if (B !== 1) throw new RangeError(`blockForward: a kv cache holds one sequence, got B = ${B}`);
    if (!(Number.isInteger(pos) && pos >= 0 && Tk <= Tmax)) {
      throw new RangeError(`blockForward: positions ${pos}..${Tk - 1} do not fit a kv cache of ${Tmax} positions`);
    }
    const cos = be.view(cache.cos, (pos * D) / 2, (T * D) / 2), sin = be.view(cache.sin, (pos * D) / 2, (T * D) / 2);
    be.ropeForward(ws.qRot, ws.qNormed, cos, sin, 1, T, H, D);
    be.ropeForward(be.view(cache.k, pos * rowKv, T * rowKv), ws.kNormed, cos, sin, 1, T, Hkv, D);
    be.copy(be.view(cache.v, pos * rowKv, T * rowKv), ws.v);
    const keys = be.view(cache.k, 0, Tk * rowKv), values = be.view(cache.v, 0, Tk * rowKv);
    be.attentionForward(ws.att, ws.lse, ws.qRot, keys, values, { ...att, Tk }, { window, qOffset: pos }, null, ws.attIn);
  } else {
    be.ropeForward(ws.qRot, ws.qNormed, ws.cos, ws.sin, B, T, H, D);
    be.ropeForward(ws.kRot, ws.kNormed, ws.cos, ws.sin, B, T, Hkv, D);
    be.attentionForward(ws.att, ws.lse, ws.qRot, ws.kRot, ws.v, att, { window }, ws.attention, ws.attIn);
  }
  lin.forward(ws.tmpC, ws.attIn ?? ws.att, 'o', N);
  be.add(ws.h, x, ws.tmpC);

  // MLP
  be.rmsnormForward(ws.ln2, ws.rstd2, ws.h, p.postNorm, N, C, eps);
  lin.forward(ws.gate, ws.ln2, 'gate', N);
  lin.forward(ws.up, ws.ln2, 'up', N);
  be.swigluForward(ws.act, ws.gate, ws.up, N, cfg.intermediateSize);
  lin.forward(ws.tmpC, ws.act, 'down', N);
  be.add(y, ws.h, ws.tmpC);
}

/**
 * Backward of blockForward (which must have run on the same ws, x and linears, without a kv
 * cache). Norm gradients (and, with the default dense linears, weight and bias gradients)
 * accumulate into g; dx (B, T, C) is overwritten when given.
 */
export function blockBackward<A>(
  cfg: ModelConfig,
  p: BlockParams<A>,
  g: BlockParams<A>,
  ws: BlockWorkspace<A>,
  x: A,
  dy: A,
  dx: A | null,
  lin: LinearImpl<A> = denseLinears(ws.be, cfg, p, g),
): void {
  const be = ws.be;
  const { B, T } = ws;
  const N = B * T;
  const C = cfg.hiddenSize;
  const H = cfg.numHeads;
  const Hkv = cfg.numKvHeads;
  const D = cfg.headDim;
  const att = { B, Tq: T, Tk: T, H, Hkv, D };
  const window = cfg.slidingWindow;
  if (be.length(ws.dh) === 0) throw new Error('blockBackward: the workspace was made without training buffers');

  // MLP: y = h + down(act)
  lin.backward(ws.dAct, dy, ws.act, 'down', N, false);
  be.zero(ws.dGate);
  be.zero(ws.dUp);
  be.swigluBackward(ws.dGate, ws.dUp, ws.dAct, ws.gate, ws.up, N, cfg.intermediateSize);
  lin.backward(ws.dln, ws.dGate, ws.ln2, 'gate', N, false);
  lin.backward(ws.dln, ws.dUp, ws.ln2, 'up', N, true);
  // dh = dy + rmsnorm backward
  be.copy(ws.dh, dy);
  be.rmsnormBackward(ws.dh, g.postNorm, ws.dln, ws.h, p.postNorm, ws.rstd2, N, C);

  // attention: h = x + o(att)
  lin.backward(ws.dAtt, ws.dh, ws.attIn ?? ws.att, 'o', N, false);
  be.zero(ws.dq);
  be.zero(ws.dk);
  be.zero(ws.dv);
  be.attentionBackward(ws.dq, ws.dk, ws.dv, ws.dAtt, ws.qRot, ws.kRot, ws.v, ws.att, ws.lse, att, { window }, ws.attention);
  be.zero(ws.dqLin);
  be.zero(ws.dkLin);
  if (cfg.qkNorm) {
    // rope backward into the normed-q/k gradients, then the per-head norm backward
    be.zero(ws.dqNormed);
    be.zero(ws.dkNormed);
    be.ropeBackward(ws.dqNormed, ws.dq, ws.cos, ws.sin, B, T, H, D);
    be.ropeBackward(ws.dkNormed, ws.dk, ws.cos, ws.sin, B, T, Hkv, D);
    be.rmsnormBackward(ws.dqLin, g.qNorm!, ws.dqNormed, ws.qLin, p.qNorm!, ws.qRstd, N * H, D);
    be.rmsnormBackward(ws.dkLin, g.kNorm!, ws.dkNormed, ws.kLin, p.kNorm!, ws.kRstd, N * Hkv, D);
  } else {
    be.ropeBackward(ws.dqLin, ws.dq, ws.cos, ws.sin, B, T, H, D);
    be.ropeBackward(ws.dkLin, ws.dk, ws.cos, ws.sin, B, T, Hkv, D);
  }
  lin.backward(ws.dln, ws.dqLin, ws.ln1, 'q', N, false);
  lin.backward(ws.dln, ws.dkLin, ws.ln1, 'k', N, true);
  lin.backward(ws.dln, ws.dv, ws.ln1, 'v', N, true);
  if (dx) {
    be.copy(dx, ws.dh);
    be.rmsnormBackward(dx, g.inputNorm, ws.dln, x, p.inputNorm, ws.rstd1, N, C);
  } else {
    // parameter gradient of the input norm only: route dx into scratch
    be.zero(ws.tmpC);
    be.rmsnormBackward(ws.tmpC, g.inputNorm, ws.dln, x, p.inputNorm, ws.rstd1, N, C);
  }
}
