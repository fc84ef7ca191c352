// Running eqat's exports in their target runtimes, for the export tests, the export conformance
// test and the export benchmark: llama.cpp through node-llama-cpp (GGUF) and onnxruntime-node
// (ONNX), both optional dependencies that may be missing or unable to load on a machine, so each
// loader returns a skip reason instead of throwing. Perplexity is computed from each runtime's
// own logits on token windows cut by eqat (src/data/windows.ts evalWindows): mean next-token NLL
// over every window, the same protocol as src/pipeline/eval.ts windowsNll. For llama.cpp, whose
// CPU kernels round activations to 8 bits before integer dot products, eqat's CPU backend with
// those roundings added (llamaCppArithmetic) is the oracle its logits are held to.
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import { Tensor } from '../../src/engine/tensor.js';
import { WeightSource } from '../../src/model/weights.js';
import { Model } from '../../src/model/model.js';
import { generateFromSource, generateIdsCached } from '../../src/pipeline/generate.js';
import { cpuBackend } from '../../src/backend/cpu.js';
import type { Backend } from '../../src/backend/backend.js';
import { decodeValues, encodeValues } from '../../src/export/ggml-types.js';
import { fromF32, toF32 } from '../../src/engine/dtype.js';
import { crossEntropyForward, IGNORE_INDEX } from '../../src/ops/crossentropy.js';
import { SHARED } from '../golden.js';

// ---------------------------------------------------------------------------------------------
// ../shared (or $EQAT_SHARED_DIR for a checkout that has no ../shared next to it)

/** The first of ../shared and $EQAT_SHARED_DIR that holds `relative` (e.g. 'data/test-mix.txt'), or null. */
export function sharedPath(relative: string): string | null {
  const env = process.env['EQAT_SHARED_DIR'];
  for (const root of [SHARED, ...(env ? [env] : [])]) {
    const p = join(root, relative);
    if (existsSync(p)) return p;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// node-llama-cpp: the part of its API these checks use (the package stays optional, so its
// types are not imported)

export interface NlcLogits {
  next: { logits?: Map<number, number>; totalLogitWeight?: number; confidence?: number };
}
export interface NlcSequence {
  clearHistory(): Promise<void>;
  controlledEvaluate(items: unknown[]): Promise<(NlcLogits | undefined)[]>;
}
export interface NlcContext {
  getSequence(): NlcSequence;
  dispose(): Promise<void>;
}
export interface NlcModel {
  tokenize(text: string, specialTokens?: boolean): readonly number[];
  createContext(o: Record<string, unknown>): Promise<NlcContext>;
  dispose(): Promise<void>;
}
export interface NlcLlama {
  loadModel(o: { modelPath: string; gpuLayers?: number; vocabOnly?: boolean }): Promise<NlcModel>;
  dispose(): Promise<void>;
}
export interface NlcGgufInfo {
  version: number;
  metadata: Record<string, unknown>;
  tensorInfo?: { name: string; dimensions: readonly (number | bigint)[]; ggmlType: number }[];
}
export interface NlcModule {
  getLlama(o: Record<string, unknown>): Promise<NlcLlama>;
  readGgufFileInfo(path: string, o?: Record<string, unknown>): Promise<NlcGgufInfo>;
}

export interface LlamaCppRuntime {
  /** The module, null when it is not installed. */
  nlc: NlcModule | null;
  /** llama.cpp loaded (prebuilt CPU binary), null when it could not be. */
  llama: NlcLlama | null;
  /** Why llama.cpp checks must skip, or false when `llama` is usable. */
  skip: string | false;
}

const NLC_NAME = 'node-llama-cpp';

/** Loads node-llama-cpp's prebuilt CPU llama.cpp (never builds or downloads anything). */
export async function loadLlamaCpp(): Promise<LlamaCppRuntime> {
  let nlc: NlcModule;
  try {
    nlc = (await import(NLC_NAME)) as NlcModule;
  } catch {
    return { nlc: null, llama: null, skip: 'node-llama-cpp is not installed (npm install node-llama-cpp) — llama.cpp checks skipped' };
  }
  try {
    const llama = await nlc.getLlama({ build: 'never', gpu: false, logLevel: 'error', progressLogs: false });
    return { nlc, llama, skip: false };
  } catch (e) {
    const why = (e as Error).message.split('\n')[0];
    return { nlc, llama: null, skip: `node-llama-cpp cannot load its prebuilt llama.cpp binary on this machine (${why}) — llama.cpp checks skipped` };
  }
}

/** Index of the largest value of `a` (the first on ties), as a greedy sampler picks. */
export function argmax(a: Float32Array): number {
  let k = 0;
  for (let i = 1; i < a.length; i++) if (a[i]! > a[k]!) k = i;
  return k;
}

/** One greedy step of llama.cpp: the token it picked and its `top` largest logits by token id. */
export interface LlamaGreedyStep {
  token: number;
  top: Map<number, number>;
}

/** Greedy continuation of `prompt` by llama.cpp, `n` tokens, with each step's `top` largest logits. */
export async function llamaGreedy(seq: NlcSequence, prompt: number[], n: number, top = 5): Promise<LlamaGreedyStep[]> {
  await seq.clearHistory();
  const steps: LlamaGreedyStep[] = [];
  let input = [...prompt];
  for (let step = 0; step < n; step++) {
    const items = input.map((tok, i) => (i === input.length - 1 ? [tok, { generateNext: { logits: { filter: { tokens: [], includeTop: top } } } }] : tok));
    const res = await seq.controlledEvaluate(items);
    const logits = res[input.length - 1]!.next.logits!;
    let token = -1;
    for (const [id, logit] of logits) if (token < 0 || logit > logits.get(token)!) token = id;
    steps.push({ token, top: new Map(logits) });
    input = [token];
  }
  return steps;
}

/** `ids` up to (not including) its first id in `eos`. */
function beforeEos(ids: number[], eos: readonly number[]): number[] {
  const k = ids.findIndex((id) => eos.includes(id));
  return k < 0 ? ids : ids.slice(0, k);
}

/**
 * eqat's greedy continuation of each of `prompts` (ids, bos included) on the checkpoint `dir`:
 * up to `maxNewTokens` ids after the prompt, ending before an eos. `eqat generate`'s, or with
 * `be` that backend's forward (llamaCppArithmetic).
 */
export function eqatGreedyIds(dir: string, prompts: number[][], maxNewTokens: number, be?: Backend<Tensor>): number[][] {
  const opts = { maxNewTokens, temperature: 0, stopAtEos: true };
  const src = WeightSource.open(dir);
  try {
    return prompts.map((prompt) => {
      let ids: number[];
      if (be === undefined) ids = generateFromSource(src, prompt, opts);
      else {
        const model = new Model(be, src, { B: 1, T: prompt.length, use: 'decode' });
        try {
          ids = generateIdsCached(model, prompt, opts);
        } finally {
          model.free();
        }
      }
      return beforeEos(ids.slice(prompt.length), src.cfg.eosTokenIds);
    });
  } finally {
    src.close();
  }
}

/**
 * llama.cpp's greedy continuation (llamaGreedy) of each of `prompts` (ids) on `gguf`, in a
 * context of `settings`: up to `maxNewTokens` ids, ending before an id of `eos`. Ids, not text:
 * llama.cpp's detokenizer drops a space before punctuation for GPT-2-style vocabularies, where
 * eqat and transformers keep it.
 */
export async function llamaCppGreedyIds(
  llama: NlcLlama,
  gguf: string,
  prompts: number[][],
  maxNewTokens: number,
  eos: readonly number[],
  settings: LlamaCppContextSettings = {},
): Promise<number[][]> {
  const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
  try {
    const all: number[][] = [];
    for (const prompt of prompts) {
      const ctx = await model.createContext({ ...settings, contextSize: 256, threads: 1 });
      try {
        const steps = await llamaGreedy(ctx.getSequence(), prompt, maxNewTokens, 1);
        all.push(beforeEos(steps.map((s) => s.token), eos));
      } finally {
        await ctx.dispose();
      }
    }
    return all;
  } finally {
    await model.dispose();
  }
}

/** transformers.js's greedy text after each of `prompts` (its text-generation pipeline, as a user calls it) on the ONNX export in `onnxDir`. */
export async function tjsGreedyTexts(tjs: typeof import('@huggingface/transformers'), onnxDir: string, prompts: string[], maxNewTokens: number): Promise<string[]> {
  tjs.env.allowRemoteModels = false;
  tjs.env.localModelPath = dirname(onnxDir);
  const gen = await tjs.pipeline('text-generation', basename(onnxDir));
  try {
    const texts: string[] = [];
    for (const p of prompts) {
      const out = (await gen(p, { max_new_tokens: maxNewTokens, do_sample: false, return_full_text: false })) as { generated_text: string }[];
      texts.push(out[0]!.generated_text);
    }
    return texts;
  } finally {
    await gen.dispose();
  }
}

/**
 * Sum of next-token NLLs (nats) over windows `first`, `first + stride`, … (< count) of `windows`
 * (count, T), from llama.cpp's logits: each window is evaluated from an empty KV cache (the
 * sequence's history is cleared), exactly the ids given (no bos added). For every position the
 * runtime returns the target's logit, the logit of the token its greedy sampler picks (the
 * largest), Σ exp(logit − largest) over the vocabulary, and the picked token's probability;
 * log p(target) follows from the first three, and the last (= 1 / Σ exactly when the picked
 * token is the largest) proves the second is the maximum.
 */
export async function llamaNllSum(seq: NlcSequence, windows: Int32Array, count: number, T: number, first = 0, stride = 1): Promise<number> {
  let total = 0;
  for (let w = first; w < count; w += stride) {
    await seq.clearHistory();
    const win = [...windows.subarray(w * T, (w + 1) * T)];
    const items = win.map((tok, i) =>
      i < T - 1
        ? [tok, { generateNext: { logits: { filter: { tokens: [win[i + 1]!], includeSelected: true } }, totalLogitWeight: true, confidence: true } }]
        : tok,
    );
    const res = await seq.controlledEvaluate(items);
    for (let i = 0; i < T - 1; i++) {
      const next = res[i]!.next;
      let max = -Infinity;
      for (const v of next.logits!.values()) max = Math.max(max, v);
      const sum = next.totalLogitWeight!;
      if (!(Math.abs(next.confidence! * sum - 1) < 1e-4)) {
        throw new Error(`llamaNllSum: window ${w} position ${i}: the sampled token is not the largest logit (confidence ${next.confidence} vs 1/${sum})`);
      }
      // log p(target) = logit − max − log Σ exp(logit − max)
      total -= next.logits!.get(win[i + 1]!)! - max - Math.log(sum);
    }
  }
  return total;
}

/** node-llama-cpp context options that change llama.cpp's arithmetic. */
export type LlamaCppContextSettings = Partial<Record<'experimentalKvCacheKeyType' | 'experimentalKvCacheValueType', 'F32' | 'F16'> & { flashAttention: boolean }>;

/**
 * llama.cpp keeping K and V in f32 and attending without flash attention. Its defaults store the
 * cache in f16 and its CPU flash attention accumulates V in f16, roundings eqat's forward does
 * not make; under these settings llama.cpp's only departure from eqat's f32 forward on an integer
 * GGUF is the 8-bit rounding of linear inputs (llamaCppArithmetic).
 */
export const LLAMA_CPP_F32_CACHE: LlamaCppContextSettings = { experimentalKvCacheKeyType: 'F32', experimentalKvCacheValueType: 'F32', flashAttention: false };

/** Mean next-token NLL (nats) over `count` windows (count, T) of ids, from llama.cpp's logits. */
export async function llamaNll(seq: NlcSequence, windows: Int32Array, count: number, T: number): Promise<number> {
  return (await llamaNllSum(seq, windows, count, T)) / (count * (T - 1));
}

export interface RuntimePerplexity {
  nll: number;
  ppl: number;
  windows: number;
  /** Wall seconds for loading the model and scoring every window. */
  seconds: number;
}

/**
 * Perplexity of the GGUF file under llama.cpp (CPU) over `count` windows (count, T). One context
 * holds `sequences` sequences of T tokens; each takes every sequences-th window, clearing its KV
 * cache in between, and they run concurrently (their tokens share decode batches, and the
 * per-token logit reads of one overlap another's).
 */
export async function llamaCppPerplexity(
  llama: NlcLlama,
  gguf: string,
  windows: Int32Array,
  count: number,
  T: number,
  { threads = 1, sequences = 4, context = {} }: { threads?: number; sequences?: number; context?: LlamaCppContextSettings } = {},
): Promise<RuntimePerplexity> {
  const t0 = performance.now();
  const S = Math.max(1, Math.min(sequences, count));
  const model = await llama.loadModel({ modelPath: gguf, gpuLayers: 0 });
  try {
    const ctx = await model.createContext({ ...context, contextSize: T, batchSize: T * S, sequences: S, threads });
    try {
      const seqs = Array.from({ length: S }, () => ctx.getSequence());
      const sums = await Promise.all(seqs.map((seq, s) => llamaNllSum(seq, windows, count, T, s, S)));
      const nll = sums.reduce((a, b) => a + b, 0) / (count * (T - 1));
      return { nll, ppl: Math.exp(nll), windows: count, seconds: (performance.now() - t0) / 1000 };
    } finally {
      await ctx.dispose();
    }
  } finally {
    await model.dispose();
  }
}

/** llama.cpp's tokenization of `text` (no bos, special-token text parsed) with the vocabulary of `gguf`. */
export async function llamaCppTokenize(llama: NlcLlama, gguf: string, text: string): Promise<number[]> {
  const model = await llama.loadModel({ modelPath: gguf, vocabOnly: true });
  try {
    return [...model.tokenize(text, true)];
  } finally {
    await model.dispose();
  }
}

/**
 * x rounded as llama.cpp's CPU backend rounds the activations of a linear whose weights are an
 * integer GGUF type: each block of 32 to int8 codes with one f16 scale amax / 127 (Q8_0, the
 * vec_dot_type of Q4_0 / Q5_0 / Q8_0; Q8_1, Q4_1's, rounds alike), here with ggml's reference
 * rounding from the export's traits table (half away from zero; ggml's AVX2 path rounds half to
 * even, which differs only on exact ties).
 */
export function roundActivationsQ8(x: Float32Array): Float32Array {
  return decodeValues('Q8_0', encodeValues('Q8_0', x), x.length);
}

/**
 * eqat's CPU backend computing as llama.cpp's CPU backend computes an exact integer GGUF: every
 * packed low-bit linear reads its input rounded by roundActivationsQ8, and the lm_head (the one
 * dense linear of a quantized model) its input rounded to the type of the GGUF's lm_head (ggml
 * converts a matmul's input to F16 for F16 weights, to BF16 for BF16). Norms, attention and the
 * rest stay eqat's f32 arithmetic (llama.cpp with an f32 kv cache does the same). The oracle for
 * llama.cpp's logits on an integer export.
 */
export function llamaCppArithmetic(headType: 'F32' | 'F16' | 'BF16'): Backend<Tensor> {
  const roundHead = (x: Float32Array): Float32Array => (headType === 'F32' ? x : toF32(headType === 'F16' ? 'f16' : 'bf16', fromF32(headType === 'F16' ? 'f16' : 'bf16', x)));
  return {
    ...cpuBackend,
    linearForward(out, x, w, bias, d, lowp) {
      cpuBackend.linearForward(out, Tensor.fromF32(roundHead(x.f32), x.shape), w, bias, d, lowp);
    },
    packedLinearForward(out, x, w, scales, bias, N, tile, lowp) {
      cpuBackend.packedLinearForward(out, Tensor.fromF32(roundActivationsQ8(x.f32), x.shape), w, scales, bias, N, tile, lowp);
    },
  };
}

/** The float type a GGUF export wrote its embeddings / lm_head in, from the report's type counts (norms are always F32). */
export function ggufHeadType(types: Record<string, number>): 'F32' | 'F16' | 'BF16' {
  return types['BF16'] ? 'BF16' : types['F16'] ? 'F16' : 'F32';
}

// ---------------------------------------------------------------------------------------------
// onnxruntime-node

export type Ort = typeof import('onnxruntime-node');
export type OrtSession = import('onnxruntime-node').InferenceSession;
export type OrtTensor = import('onnxruntime-node').Tensor;

/** Loads onnxruntime-node, or says why ONNX checks must skip. */
export async function loadOrt(): Promise<{ ort: Ort | null; skip: string | false }> {
  try {
    const ort = await import('onnxruntime-node');
    return { ort, skip: false };
  } catch (e) {
    const why = (e as Error).message.split('\n')[0];
    return { ort: null, skip: `onnxruntime-node is not installed or cannot load (${why}) — onnxruntime checks skipped` };
  }
}

/** The sizes the exported decoder's inputs and outputs take. */
export interface DecoderDims {
  layers: number;
  kvHeads: number;
  headDim: number;
  vocab: number;
}

/** Decoder sizes from a Hugging Face config.json in `dir` (a checkpoint or an ONNX export directory). */
export function decoderDims(dir: string): DecoderDims {
  const c = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, number | undefined>;
  const heads = c['num_attention_heads']!;
  return {
    layers: c['num_hidden_layers']!,
    kvHeads: c['num_key_value_heads'] ?? heads,
    headDim: c['head_dim'] ?? c['hidden_size']! / heads,
    vocab: c['vocab_size']!,
  };
}

export interface DecoderRunOptions {
  /** (B, past + S); all ones when omitted. */
  mask?: number[][];
  /** (B, S); past … past + S − 1 when omitted. */
  positions?: number[][];
  /** past_key_values.{i}.{key,value} from an earlier run's `present`. */
  past?: Record<string, OrtTensor>;
  /** Fetch only the logits (no present key/values). */
  logitsOnly?: boolean;
}

/** Runs the exported decoder on rows of ids (B, S) after `past` cached entries; logits (B, S, V). */
export async function runDecoder(
  ort: Ort,
  session: OrtSession,
  dims: DecoderDims,
  ids: ArrayLike<number>[],
  opts: DecoderRunOptions = {},
): Promise<{ logits: Float32Array; present: Record<string, OrtTensor> }> {
  const B = ids.length;
  const S = ids[0]!.length;
  const pastLen = opts.past ? opts.past['past_key_values.0.key']!.dims[2]! : 0;
  const i64 = (rows: ArrayLike<number>[], width: number): OrtTensor => {
    const data = new BigInt64Array(rows.length * width);
    rows.forEach((r, b) => {
      assert.equal(r.length, width, 'runDecoder: ragged rows');
      for (let t = 0; t < width; t++) data[b * width + t] = BigInt(r[t]!);
    });
    return new ort.Tensor('int64', data, [rows.length, width]);
  };
  const mask = opts.mask ?? ids.map(() => new Array<number>(pastLen + S).fill(1));
  const positions = opts.positions ?? ids.map(() => Array.from({ length: S }, (_, t) => pastLen + t));
  const feeds: Record<string, OrtTensor> = {
    input_ids: i64(ids, S),
    attention_mask: i64(mask, pastLen + S),
    position_ids: i64(positions, S),
  };
  for (let i = 0; i < dims.layers; i++) {
    for (const kv of ['key', 'value']) {
      const name = `past_key_values.${i}.${kv}`;
      feeds[name] = opts.past?.[name] ?? new ort.Tensor('float32', new Float32Array(0), [B, dims.kvHeads, 0, dims.headDim]);
    }
  }
  const out = opts.logitsOnly ? await session.run(feeds, ['logits']) : await session.run(feeds);
  const present: Record<string, OrtTensor> = {};
  for (const [k, v] of Object.entries(out)) if (k.startsWith('present.')) present[k.replace('present.', 'past_key_values.')] = v;
  assert.deepEqual(out['logits']!.dims, [B, S, dims.vocab]);
  return { logits: out['logits']!.data as Float32Array, present };
}

/** Mean next-token NLL (nats) of logits (W, T, V) for the token rows (W, T), in float64 JavaScript. */
export function meanNll(logits: Float32Array, rows: ArrayLike<number>[], vocab: number): number {
  const T = rows[0]!.length;
  let total = 0;
  for (let w = 0; w < rows.length; w++) {
    for (let p = 0; p < T - 1; p++) {
      const row = logits.subarray((w * T + p) * vocab, (w * T + p + 1) * vocab);
      let max = -Infinity;
      for (let k = 0; k < vocab; k++) max = Math.max(max, row[k]!);
      let sum = 0;
      for (let k = 0; k < vocab; k++) sum += Math.exp(row[k]! - max);
      total += max + Math.log(sum) - row[rows[w]![p + 1]!]!;
    }
  }
  return total / (rows.length * (T - 1));
}

/**
 * Perplexity of an exported ONNX decoder under onnxruntime (CPU) over `count` windows (count, T),
 * `batch` windows per run (no past key/values, logits only). The per-token cross-entropy of the
 * runtime's logits is taken with eqat's native softmax cross-entropy (max-subtracted, f64 sums),
 * the same op `eqat eval` applies to its own logits.
 */
export async function ortPerplexity(
  ort: Ort,
  onnxPath: string,
  dims: DecoderDims,
  windows: Int32Array,
  count: number,
  T: number,
  { batch = 4, threads = 2 }: { batch?: number; threads?: number } = {},
): Promise<RuntimePerplexity> {
  const t0 = performance.now();
  const session = await ort.InferenceSession.create(onnxPath, { intraOpNumThreads: threads, interOpNumThreads: 1 });
  try {
    const targets = new Int32Array(batch * T);
    const losses = Tensor.zeros([batch * T]);
    let total = 0;
    for (let w0 = 0; w0 < count; w0 += batch) {
      const B = Math.min(batch, count - w0);
      const rows = Array.from({ length: B }, (_, b) => windows.subarray((w0 + b) * T, (w0 + b + 1) * T));
      const { logits } = await runDecoder(ort, session, dims, rows, { logitsOnly: true });
      for (let b = 0; b < B; b++) {
        for (let t = 0; t < T - 1; t++) targets[b * T + t] = rows[b]![t + 1]!;
        targets[b * T + T - 1] = IGNORE_INDEX;
      }
      const n = B * T;
      const l = B === batch ? losses : Tensor.zeros([n]);
      crossEntropyForward(l, Tensor.fromF32(logits, [n, dims.vocab]), Tensor.fromI32(targets.subarray(0, n)));
      for (let i = 0; i < n; i++) total += l.f32[i]!;
    }
    const nll = total / (count * (T - 1));
    return { nll, ppl: Math.exp(nll), windows: count, seconds: (performance.now() - t0) / 1000 };
  } finally {
    await session.release();
  }
}
