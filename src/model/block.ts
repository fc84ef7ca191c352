// The Llama-family decoder block (llama, mistral, qwen2, qwen3) as an explicit forward /
// backward pair composed from the engine's ops, in the style of llm.c:
//
//   h   = x + o_proj(attn(rope(qk_norm(q_proj(ln1(x)))), rope(qk_norm(k_proj(ln1(x)))), v_proj(ln1(x))))
//   y   = h + down_proj(silu(gate_proj(ln2(h))) * up_proj(ln2(h)))
//
// Parameters, gradients and activations are separate structs allocated once by the caller
// (BlockWorkspace holds every activation and scratch buffer for a fixed number of rows), so
// a training step allocates nothing. The block does not know about quantization: Block-AP
// passes fake-quantized weights in and receives their gradients back. For decoding, the forward
// can also append its keys and values to a KvCache and attend over everything cached.
import { Tensor, Arena, expectShape } from '../engine/tensor.js';
import { linearShape, type ModelConfig } from './config.js';
import { linearBackward, linearForward } from '../ops/linear.js';
import { rmsnormBackward, rmsnormForward } from '../ops/rmsnorm.js';
import { ropeBackward, ropeForward } from '../ops/rope.js';
import { attentionBackward, attentionForward } from '../ops/attention.js';
import { swigluBackward, swigluForward } from '../ops/swiglu.js';
import { add, copy, fill } from '../ops/elementwise.js';

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

/** One block's parameters; optional entries exist only when the family has them. */
export type BlockParams = { [K in BlockParamName]?: Tensor } & {
  inputNorm: Tensor; // (C)
  q: Tensor; // (H*D, C)
  k: Tensor; // (Hkv*D, C)
  v: Tensor; // (Hkv*D, C)
  o: Tensor; // (C, H*D)
  postNorm: Tensor; // (C)
  gate: Tensor; // (F, C)
  up: Tensor; // (F, C)
  down: Tensor; // (C, F)
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

/** Activations and scratch of one block for B sequences of T tokens (N = B*T rows). */
export class BlockWorkspace {
  readonly B: number;
  readonly T: number;
  // forward activations kept for the backward
  readonly ln1: Tensor; // (N, C)
  readonly rstd1: Tensor; // (N)
  readonly qLin: Tensor; // (N, H*D) q projection (before qk-norm)
  readonly kLin: Tensor; // (N, Hkv*D)
  readonly qNormed: Tensor; // (N, H*D) after qk-norm (aliases qLin without qk-norm)
  readonly kNormed: Tensor; // (N, Hkv*D)
  readonly qRstd: Tensor; // (N*H)
  readonly kRstd: Tensor; // (N*Hkv)
  readonly qRot: Tensor; // (B, T, H, D)
  readonly kRot: Tensor; // (B, T, Hkv, D)
  readonly v: Tensor; // (B, T, Hkv, D)
  readonly att: Tensor; // (B, T, H, D)
  readonly lse: Tensor; // (B, H, T)
  readonly h: Tensor; // (N, C) residual after attention
  readonly ln2: Tensor; // (N, C)
  readonly rstd2: Tensor; // (N)
  readonly gate: Tensor; // (N, F)
  readonly up: Tensor; // (N, F)
  readonly act: Tensor; // (N, F)
  // scratch
  readonly tmpC: Tensor; // (N, C)
  readonly dh: Tensor; // (N, C)
  readonly dln: Tensor; // (N, C)
  readonly dAct: Tensor; // (N, F)
  readonly dGate: Tensor; // (N, F)
  readonly dUp: Tensor; // (N, F)
  readonly dAtt: Tensor; // (B, T, H, D)
  readonly dq: Tensor; // (B, T, H, D)
  readonly dk: Tensor; // (B, T, Hkv, D)
  readonly dv: Tensor; // (B, T, Hkv, D)
  readonly dqLin: Tensor; // (N, H*D)
  readonly dkLin: Tensor; // (N, Hkv*D)
  readonly dqNormed: Tensor; // (N, H*D) qk-norm families only
  readonly dkNormed: Tensor; // (N, Hkv*D)
  cos: Tensor; // (T, D/2)
  sin: Tensor; // (T, D/2)

  constructor(
    readonly cfg: ModelConfig,
    B: number,
    T: number,
    rope: { cos: Tensor; sin: Tensor },
    { training = true }: { training?: boolean } = {},
  ) {
    this.B = B;
    this.T = T;
    const N = B * T;
    const C = cfg.hiddenSize;
    const F = cfg.intermediateSize;
    const H = cfg.numHeads;
    const Hkv = cfg.numKvHeads;
    const D = cfg.headDim;
    const z = (shape: number[]) => Tensor.zeros(shape);
    this.ln1 = z([N, C]);
    this.rstd1 = z([N]);
    this.qLin = z([N, H * D]);
    this.kLin = z([N, Hkv * D]);
    this.qNormed = cfg.qkNorm ? z([N, H * D]) : this.qLin;
    this.kNormed = cfg.qkNorm ? z([N, Hkv * D]) : this.kLin;
    this.qRstd = z([cfg.qkNorm ? N * H : 1]);
    this.kRstd = z([cfg.qkNorm ? N * Hkv : 1]);
    this.qRot = z([B, T, H, D]);
    this.kRot = z([B, T, Hkv, D]);
    this.v = z([B, T, Hkv, D]);
    this.att = z([B, T, H, D]);
    this.lse = z([B, H, T]);
    this.h = z([N, C]);
    this.ln2 = z([N, C]);
    this.rstd2 = z([N]);
    this.gate = z([N, F]);
    this.up = z([N, F]);
    this.act = z([N, F]);
    this.tmpC = z([N, C]);
    const s = (shape: number[]) => (training ? z(shape) : z([0]));
    this.dh = s([N, C]);
    this.dln = s([N, C]);
    this.dAct = s([N, F]);
    this.dGate = s([N, F]);
    this.dUp = s([N, F]);
    this.dAtt = s([B, T, H, D]);
    this.dq = s([B, T, H, D]);
    this.dk = s([B, T, Hkv, D]);
    this.dv = s([B, T, Hkv, D]);
    this.dqLin = s([N, H * D]);
    this.dkLin = s([N, Hkv * D]);
    this.dqNormed = cfg.qkNorm ? s([N, H * D]) : z([0]);
    this.dkNormed = cfg.qkNorm ? s([N, Hkv * D]) : z([0]);
    expectShape(rope.cos, [T, D / 2], 'BlockWorkspace rope cos');
    this.cos = rope.cos;
    this.sin = rope.sin;
  }
}

/**
 * How a block's linear layers compute: dense f32 weights from BlockParams (full precision,
 * and Block-AP's fake-quantized weights), or packed low-bit weights (E2E-QP, quantized eval).
 * Biases are part of the layer.
 */
export interface LinearImpl {
  // out (N, O) = x (N, I) Wᵀ + b
  forward(out: Tensor, x: Tensor, key: BlockLinear): void;
  // dx (N, I) = dout W (overwritten, or accumulated when accumulateDx); parameter gradients accumulate
  backward(dx: Tensor | null, dout: Tensor, x: Tensor, key: BlockLinear, accumulateDx: boolean): void;
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

/** Dense linears reading W and b from p; gradients (when g is given) accumulate into g. */
export function denseLinears(p: BlockParams, g: BlockParams | null = null): LinearImpl {
  return {
    forward(out, x, key) {
      linearForward(out, x, p[key], p[BIAS_OF[key]]);
    },
    backward(dx, dout, x, key, accumulateDx) {
      linearBackward(dx, g ? g[key] : null, g ? g[BIAS_OF[key]] : null, dout, x, p[key], accumulateDx);
    },
  };
}

/**
 * One block's keys (after rope) and values for decoding one sequence: rows [0, pos) hold the
 * positions already run, where pos is what the caller passes to blockForward next.
 */
export interface KvCache {
  k: Tensor; // (Tmax, Hkv, D)
  v: Tensor; // (Tmax, Hkv, D)
}

/**
 * y (B, T, C) = block(x (B, T, C)); keeps what the backward needs in ws. y may not alias x.
 * Norms (and, with the default dense linears, weights and biases) come from p.
 * With `kv` (decoding, B = 1): x holds positions pos .. pos+T-1, ws.cos/ws.sin must be the rope
 * tables of those positions; their keys and values are written to kv.cache rows [pos, pos+T)
 * and the queries attend over rows [0, pos+T) of the cache.
 */
export function blockForward(
  cfg: ModelConfig,
  p: BlockParams,
  ws: BlockWorkspace,
  x: Tensor,
  y: Tensor,
  lin: LinearImpl = denseLinears(p),
  kv?: { cache: KvCache; pos: number },
): void {
  const { B, T } = ws;
  const N = B * T;
  const C = cfg.hiddenSize;
  const H = cfg.numHeads;
  const Hkv = cfg.numKvHeads;
  const D = cfg.headDim;
  const eps = cfg.rmsNormEps;
  const x2 = x.view([N, C]);
  const y2 = y.view([N, C]);
  const window = cfg.slidingWindow;

  // attention
  rmsnormForward(ws.ln1, ws.rstd1, x2, p.inputNorm, eps);
  lin.forward(ws.qLin, ws.ln1, 'q');
  lin.forward(ws.kLin, ws.ln1, 'k');
  lin.forward(ws.v.view([N, Hkv * D]), ws.ln1, 'v');
  if (cfg.qkNorm) {
    rmsnormForward(ws.qNormed.view([N * H, D]), ws.qRstd, ws.qLin.view([N * H, D]), p.qNorm!, eps);
    rmsnormForward(ws.kNormed.view([N * Hkv, D]), ws.kRstd, ws.kLin.view([N * Hkv, D]), p.kNorm!, eps);
  }
  ropeForward(ws.qRot, ws.qNormed.view([B, T, H, D]), ws.cos, ws.sin);
  ropeForward(ws.kRot, ws.kNormed.view([B, T, Hkv, D]), ws.cos, ws.sin);
  if (kv) {
    const { cache, pos } = kv;
    const Tk = pos + T;
    if (B !== 1) throw new RangeError(`blockForward: a kv cache holds one sequence, got B = ${B}`);
    if (!(Number.isInteger(pos) && pos >= 0 && Tk <= cache.k.dim(0))) {
      throw new RangeError(`blockForward: positions ${pos}..${Tk - 1} do not fit a kv cache of ${cache.k.dim(0)} positions`);
    }
    copy(cache.k.rows(pos, T), ws.kRot.view([T, Hkv, D]));
    copy(cache.v.rows(pos, T), ws.v.view([T, Hkv, D]));
    const keys = cache.k.rows(0, Tk).view([1, Tk, Hkv, D]);
    const values = cache.v.rows(0, Tk).view([1, Tk, Hkv, D]);
    attentionForward(ws.att, ws.lse, ws.qRot, keys, values, { window, qOffset: pos });
  } else {
    attentionForward(ws.att, ws.lse, ws.qRot, ws.kRot, ws.v, { window });
  }
  lin.forward(ws.tmpC, ws.att.view([N, H * D]), 'o');
  add(ws.h, x2, ws.tmpC);

  // MLP
  rmsnormForward(ws.ln2, ws.rstd2, ws.h, p.postNorm, eps);
  lin.forward(ws.gate, ws.ln2, 'gate');
  lin.forward(ws.up, ws.ln2, 'up');
  swigluForward(ws.act, ws.gate, ws.up);
  lin.forward(ws.tmpC, ws.act, 'down');
  add(y2, ws.h, ws.tmpC);
}

/**
 * Backward of blockForward (which must have run on the same ws, x and linears).
 * Norm gradients (and, with the default dense linears, weight and bias gradients) accumulate
 * into g; dx (B, T, C) is overwritten when given.
 */
export function blockBackward(
  cfg: ModelConfig,
  p: BlockParams,
  g: BlockParams,
  ws: BlockWorkspace,
  x: Tensor,
  dy: Tensor,
  dx: Tensor | null,
  lin: LinearImpl = denseLinears(p, g),
): void {
  const { B, T } = ws;
  const N = B * T;
  const C = cfg.hiddenSize;
  const H = cfg.numHeads;
  const Hkv = cfg.numKvHeads;
  const D = cfg.headDim;
  const x2 = x.view([N, C]);
  const dy2 = dy.view([N, C]);
  const window = cfg.slidingWindow;

  // MLP: y = h + down(act)
  lin.backward(ws.dAct, dy2, ws.act, 'down', false);
  fill(ws.dGate, 0);
  fill(ws.dUp, 0);
  swigluBackward(ws.dGate, ws.dUp, ws.dAct, ws.gate, ws.up);
  lin.backward(ws.dln, ws.dGate, ws.ln2, 'gate', false);
  lin.backward(ws.dln, ws.dUp, ws.ln2, 'up', true);
  // dh = dy + rmsnorm backward
  ws.dh.f32.set(dy2.f32);
  rmsnormBackward(ws.dh, g.postNorm, ws.dln, ws.h, p.postNorm, ws.rstd2);

  // attention: h = x + o(att)
  lin.backward(ws.dAtt.view([N, H * D]), ws.dh, ws.att.view([N, H * D]), 'o', false);
  fill(ws.dq, 0);
  fill(ws.dk, 0);
  fill(ws.dv, 0);
  attentionBackward(ws.dq, ws.dk, ws.dv, ws.dAtt, ws.qRot, ws.kRot, ws.v, ws.att, ws.lse, { window });
  fill(ws.dqLin, 0);
  fill(ws.dkLin, 0);
  if (cfg.qkNorm) {
    // rope backward into the normed-q/k gradients, then the per-head norm backward
    fill(ws.dqNormed, 0);
    fill(ws.dkNormed, 0);
    ropeBackward(ws.dqNormed.view([B, T, H, D]), ws.dq, ws.cos, ws.sin);
    ropeBackward(ws.dkNormed.view([B, T, Hkv, D]), ws.dk, ws.cos, ws.sin);
    rmsnormBackward(ws.dqLin.view([N * H, D]), g.qNorm!, ws.dqNormed.view([N * H, D]), ws.qLin.view([N * H, D]), p.qNorm!, ws.qRstd);
    rmsnormBackward(ws.dkLin.view([N * Hkv, D]), g.kNorm!, ws.dkNormed.view([N * Hkv, D]), ws.kLin.view([N * Hkv, D]), p.kNorm!, ws.kRstd);
  } else {
    ropeBackward(ws.dqLin.view([B, T, H, D]), ws.dq, ws.cos, ws.sin);
    ropeBackward(ws.dkLin.view([B, T, Hkv, D]), ws.dk, ws.cos, ws.sin);
  }
  lin.backward(ws.dln, ws.dqLin, ws.ln1, 'q', false);
  lin.backward(ws.dln, ws.dkLin, ws.ln1, 'k', true);
  lin.backward(ws.dln, ws.dv.view([N, Hkv * D]), ws.ln1, 'v', true);
  if (dx) {
    const dx2 = dx.view([N, C]);
    dx2.f32.set(ws.dh.f32);
    rmsnormBackward(dx2, g.inputNorm, ws.dln, x2, p.inputNorm, ws.rstd1);
  } else {
    // parameter gradient of the input norm only: route dx into scratch
    fill(ws.tmpC, 0);
    rmsnormBackward(ws.tmpC, g.inputNorm, ws.dln, x2, p.inputNorm, ws.rstd1);
  }
}
