// E2E-QP, the second phase of EfficientQAT: the integer weights stay frozen and packed; only
// the per-group step sizes of every linear are trained, end to end, on next-token loss.
//
// Recipe (official): AdamW (wd 0) over step sizes only, lr 2e-5 (2-bit) / 1e-5 (3/4-bit),
// cosine schedule with 3% linear warmup (transformers' get_cosine_schedule_with_warmup),
// global-norm gradient clipping at 0.3, global batch 32 by accumulating micro-batches, one
// epoch over train_size samples of seqlen tokens.
//
// The steps run on the CPU or CUDA through one trainer over the Backend (src/pipeline/e2e-trainer.ts).
// Memory: per micro-batch only the hidden states at block boundaries are kept; each block's
// activations are recomputed during the backward (one block's workspace at a time), and the
// gradient w.r.t. a layer's dequantized weight only ever exists tile by tile (inside the CPU's
// packed-linear kernel; in one shared tile on CUDA).
//
// Resume: every `saveEvery` optimizer steps (default 8, and after any step that ends 10 minutes
// or more after the last save) the training state goes atomically (temp file, fsync, rename)
// into `<out>.partial/e2e-qp-state.safetensors`: the f32 step sizes, AdamW's m and v, and in its
// metadata the next step, the losses, the log lines so far and a fingerprint of the inputs
// (every setting and the seed; the model and the data by content: src/io/fingerprint.ts).
// A rerun with the same inputs continues from there: batches are a function
// of the seed and the step index, the lr schedule of the step index, so the checkpoint equals
// an uninterrupted run's byte for byte; only the timing fields (`seconds` of each log line and
// of eqat-recipe.json's e2e_qp) differ. Other inputs are refused naming what differs; `restart`
// discards the state. The finished checkpoint appears at `<out>` only by a rename at the end.
import { appendFileSync, copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { Arena, type Tensor } from '../engine/tensor.js';
import { UsageError } from '../cli/args.js';
import { claimOutput, explainSystemError, removeTemporaries, interruptionPoint, publishOutput, throwIfAborted, type OutputClaim } from '../io/output.js';
import { peakRssBytes, writeReport } from '../report/report.js';
import { BF16_NEEDS_CUDA, type DeviceArray } from '../engine/cuda.js';
import { WeightSource } from '../model/weights.js';
import { BLOCK_LINEARS } from '../model/block.js';
import { checkPositions } from '../model/config.js';
import { firstNonFinite } from '../ops/reduce.js';
import { checkInputPath } from '../io/errors.js';
import { resolveModel } from '../io/hub.js';
import { resolveCorpus } from '../data/named-datasets.js';
import { PackedModel, type PackedBlock } from '../model/quantized.js';
import type { Precision } from '../backend/backend.js';
import { cpuBackend } from '../backend/cpu.js';
import { cudaBackend } from '../backend/cuda.js';
import { E2eTrainer } from './e2e-trainer.js';
import { scalesToF16 } from '../quant/primitives.js';
import { unpackQweight } from '../quant/gptq-pack.js';
import { writeSafetensors } from '../io/safetensors-write.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { isJsonObject } from '../io/errors.js';
import { dataIdentity, inputDifference, modelIdentity, otherRunError, unusableStateError, type DataIdentity, type InputIdentity } from '../io/fingerprint.js';
import {
  blockShardTensors,
  headShardTensors,
  shardCount,
  shardName,
  writeCheckpointMetadata,
  writeJsonAtomic,
  type FrozenLinears,
} from '../io/quant-checkpoint.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { cachedTokenStream } from '../data/token-cache.js';
import { sampleWindows } from '../data/windows.js';
import { readDocuments } from '../data/documents.js';
import { buildSupervisedSamples, detectDataFormat, loadChatTemplate, readInstructRecords } from '../data/instruct.js';
import { reporter } from '../cli/progress.js';
import type { OnEvent } from './events.js';
import { eqatVersion } from '../engine/version.js';
import { validateCommandSettings } from './recipe.js';

/**
 * Every E2E-QP setting that changes the trained result, apart from the model, the data path and
 * the sampling seed: the one type behind the `e2e-qp` flags, the `e2e_qp` section of a quantize
 * recipe (src/pipeline/recipe.ts, which adds a nullable `data`) and the resume check.
 */
export interface E2eQpSettings {
  /** auto: a .json/.jsonl file whose first record has instruction/output or messages is instruction data, anything else text. */
  dataFormat: 'auto' | 'text' | 'instruct';
  /** Training samples (text windows or instruction records, cycled when the data has fewer). */
  trainSize: number;
  seqlen: number;
  /** Global batch: samples per optimizer step. */
  batchSize: number;
  /** Samples per forward/backward pass; gradients accumulate over batchSize / microBatchSize passes. */
  microBatchSize: number;
  /** Passes over the training samples (a quantize recipe may set 0 to skip E2E-QP). */
  epochs: number;
  /** AdamW learning rate of the step sizes (the only parameters E2E-QP trains). */
  lr: number;
  /** Fraction of the steps spent in linear warm-up. */
  warmupRatio: number;
  /** Global gradient-norm clip (torch clip_grad_norm_); 0 turns clipping off. */
  maxGradNorm: number;
  weightDecay: number;
}

/** The recipe of one run: the settings, what they apply to, and the seed of data sampling. */
export interface E2eQpRecipe extends E2eQpSettings {
  /** Quantized model directory (GPTQ v2, e.g. a Block-AP checkpoint). */
  model: string;
  /** Training data: text corpus or instruction .jsonl/.json. */
  data: string;
  seed: number;
}

export interface E2eQpOptions extends E2eQpRecipe {
  out: string;
  /** No progress on stderr (the CLI's bar). */
  quiet?: boolean;
  /** Called with every progress event of the run (src/pipeline/events.ts), in order. */
  onEvent?: OnEvent;
  /**
   * Cancellation: once aborted, the run stops after its current optimizer step (as for SIGINT),
   * keeping the last saved state in `<out>.partial/` for a rerun to resume, and rejects with
   * AbortedError.
   */
  signal?: AbortSignal;
  /** Extra fields recorded in eqat-recipe.json (e.g. the Block-AP phase of `eqat quantize`). */
  record?: Record<string, unknown>;
  /** More JSON files of the checkpoint by name (`eqat quantize`'s recipe.json), written before it is published. */
  files?: Record<string, unknown>;
  /**
   * Save the training state into `<out>.partial/` every this many optimizer steps, and after
   * any step that ends E2E_QP_SAVE_SECONDS or more after the last save; 0 = never.
   * Default: E2E_QP_SAVE_EVERY.
   */
  saveEvery?: number;
  /** Discard an interrupted run's state in `<out>.partial/` and start from step 0. */
  restart?: boolean;
  /** Replace an existing `out` (once the new checkpoint is complete). */
  force?: boolean;
  /** `out` as already claimed by the caller (`eqat quantize`), which then releases it. */
  output?: OutputClaim;
  /** Called after every optimizer step, after any save (tests use it to interrupt a run). */
  onStep?: (step: number) => void;
  /** Where the arithmetic runs (default cpu); a saved state resumes on either device. */
  device?: 'cpu' | 'cuda';
  /** GEMM input precision on CUDA (default bf16); the CPU computes in f32. */
  precision?: 'f32' | 'bf16';
  /**
   * How a setting (camelCase key) is named in a refused-resume message; default: the e2e-qp
   * flag, e.g. `lr (--lr)`. `eqat quantize` names its recipe key and flag instead.
   */
  settingName?: (key: string) => string;
}

/**
 * The defaults, the paper's recipe (the one table of E2E-QP presets; recipe.ts takes its e2e_qp
 * section from here): 4096 samples x 4096 tokens, global batch 32 in micro batches of 1, one
 * epoch, lr 2e-5 at 2 bits else 1e-5, 3% warm-up, clip 0.3, no weight decay, seed 2.
 * Keys are in the order eqat-recipe.json records them.
 */
export function e2eQpDefaults(wbits: number): Omit<E2eQpRecipe, 'model' | 'data'> {
  return {
    dataFormat: 'auto',
    trainSize: 4096,
    seqlen: 4096,
    batchSize: 32,
    microBatchSize: 1,
    epochs: 1,
    lr: wbits === 2 ? 2e-5 : 1e-5,
    warmupRatio: 0.03,
    maxGradNorm: 0.3,
    weightDecay: 0,
    seed: 2,
  };
}

/** What --data (and a quantize recipe's e2e_qp.data) takes, for messages. */
export const E2E_QP_DATA_FILES = 'a .txt, .jsonl or .parquet text file, or instruction .jsonl/.json';

/** Default of --save-every: optimizer steps between saves of the training state. */
export const E2E_QP_SAVE_EVERY = 8;
/** A step that ends this long after the last save saves too (unless saving is off). */
export const E2E_QP_SAVE_SECONDS = 600;
/** The training state inside `<out>.partial/` while a run is in progress. */
export const E2E_QP_STATE_FILE = 'e2e-qp-state.safetensors';

export interface E2eQpStepLog {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  seconds: number;
}

export interface E2eQpResult {
  out: string;
  steps: number;
  firstLoss: number;
  lastLoss: number;
  /** Training seconds over all runs (a resumed run adds its time to the saved state's). */
  seconds: number;
  packedBytes: number;
  /** Optimizer steps restored from a saved state; 0 when the run started from scratch. */
  resumedFrom: number;
}

/** transformers' cosine schedule with linear warmup: the lr used at optimizer step `step` (0-based). */
export function warmupCosineLr(lr: number, step: number, totalSteps: number, warmupSteps: number): number {
  if (step < warmupSteps) return (lr * step) / Math.max(1, warmupSteps);
  const progressFrac = (step - warmupSteps) / Math.max(1, totalSteps - warmupSteps);
  return lr * Math.max(0, 0.5 * (1 + Math.cos(Math.PI * progressFrac)));
}

/**
 * Checks everything about a run that can be checked before any work; throws naming the flag.
 * The settings are checked by the recipe schema (validateCommandSettings), as the flags are.
 */
export function validateE2eQp(o: E2eQpOptions): void {
  const fail = (flag: string, msg: string): never => {
    throw new UsageError(`--${flag}: ${msg}`);
  };
  validateCommandSettings('e2e-qp', o);
  if (o.precision !== undefined && o.precision !== 'f32' && o.precision !== 'bf16') fail('precision', `must be f32 or bf16, got ${String(o.precision)}`);
  if (o.precision === 'bf16' && (o.device ?? 'cpu') !== 'cuda') fail('precision', BF16_NEEDS_CUDA);
  const saveEvery = o.saveEvery ?? E2E_QP_SAVE_EVERY;
  if (!Number.isSafeInteger(saveEvery) || saveEvery < 0) fail('save-every', `must be a non-negative integer, got ${saveEvery}`);
}

/**
 * Reads training data as runE2eQp does, short of tokenizing it: the path (named as `flag`), the
 * format, every record or document, the share of non-text characters. `eqat quantize` calls it
 * before Block-AP, so that a bad e2e_qp.data fails before that phase's hours, not after.
 */
export async function checkTrainingData(flag: string, data: string, dataFormat: E2eQpSettings['dataFormat']): Promise<void> {
  checkInputPath(flag, data, 'file', E2E_QP_DATA_FILES);
  const format = dataFormat === 'auto' ? detectDataFormat(data) : dataFormat;
  if (format === 'instruct') await readInstructRecords(data);
  else await readDocuments(data);
}

/** Training samples: ids (count, T) and shifted labels (count, T) with -100 where no loss. */
interface Samples {
  ids: Int32Array;
  labels: Int32Array;
  count: number;
  /** The data file they were drawn from, by content. */
  data: DataIdentity;
}

/** Text → next-token labels on every position; instruction data → loss on responses only. */
async function trainingSamples(o: E2eQpOptions): Promise<Samples> {
  const format = o.dataFormat === 'auto' ? detectDataFormat(o.data) : o.dataFormat;
  if (format === 'instruct') {
    const tok = loadTokenizer(o.model);
    const records = await readInstructRecords(o.data);
    const built = buildSupervisedSamples(records, tok, loadChatTemplate(o.model), { seqlen: o.seqlen, count: o.trainSize, seed: o.seed });
    const ids = new Int32Array(o.trainSize * o.seqlen);
    const labels = new Int32Array(o.trainSize * o.seqlen);
    built.forEach((smp, i) => {
      ids.set(smp.ids, i * o.seqlen);
      labels.set(smp.labels, i * o.seqlen);
    });
    return { ids, labels, count: built.length, data: dataIdentity(o.data) };
  }
  return textSamples(o);
}

async function textSamples(o: E2eQpOptions): Promise<Samples> {
  const tok = loadTokenizer(o.model);
  const corpus = await cachedTokenStream(o.data, o.model, tok);
  const T = o.seqlen;
  const w = sampleWindows(corpus.tokens, tok, { seqlen: T, trainSize: o.trainSize, valSize: 0, seed: o.seed }, `--data ${o.data}`);
  const labels = new Int32Array(w.train.length);
  for (let s = 0; s < o.trainSize; s++) {
    for (let t = 0; t < T - 1; t++) labels[s * T + t] = w.train[s * T + t + 1]!;
    labels[s * T + T - 1] = -100;
  }
  return { ids: w.train, labels, count: o.trainSize, data: corpus.identity };
}

/**
 * The host copy of the trained state: step sizes of all blocks in one arena with AdamW's
 * moments, what a save writes and a resume reads. Layout: for each block in order, for each
 * linear in BLOCK_LINEARS order, its (O, I/G) step sizes; the model's step sizes become views
 * into it, so the checkpoint is written from it. The trainer (src/pipeline/e2e-trainer.ts)
 * holds the same layout on its backend, with the gradients.
 */
export class ScaleState {
  readonly params: Arena;
  readonly m: Arena;
  readonly v: Arena;

  constructor(blocks: PackedBlock[]) {
    let n = 0;
    for (const b of blocks) for (const [key] of BLOCK_LINEARS) n += b.scales[key].size;
    this.params = new Arena(n);
    this.m = new Arena(n);
    this.v = new Arena(n);
    for (const b of blocks) {
      for (const [key] of BLOCK_LINEARS) {
        const t = this.params.take(b.scales[key].shape);
        t.f32.set(b.scales[key].f32);
        b.scales[key] = t; // the model now reads its step sizes from the arena
      }
    }
  }
}

/** The trainer of a run on `device`, over the host state (GEMMs in `precision`: bf16 on CUDA only). */
function trainerOn(device: 'cpu' | 'cuda', model: PackedModel, state: ScaleState, mb: number, T: number, precision: Precision): E2eTrainer<Tensor> | E2eTrainer<DeviceArray> {
  return device === 'cuda' ? new E2eTrainer(cudaBackend, model, state, mb, T, precision) : new E2eTrainer(cpuBackend, model, state, mb, T, precision);
}

// ---------------------------------------------------------------------------------------------
// Resume: the training state saved in `<out>.partial/` and the check that it belongs to this run

/** What the inputs of a run were: a saved state resumes only under an equal fingerprint. */
interface Fingerprint {
  /** Every setting that changes the result (E2eQpSettings and the seed), in e2eQpDefaults' order. */
  recipe: Record<string, unknown>;
  /** The model directory and the training data by content. */
  inputs: InputIdentity;
}

/** The state file's metadata (under the key STATE_KEY); the tensors hold the numbers. */
interface SavedState {
  format: typeof STATE_FORMAT;
  fingerprint: Fingerprint;
  /** Optimizer steps done; the run continues with step index nextStep (0-based). */
  nextStep: number;
  totalSteps: number;
  firstLoss: number;
  lastLoss: number;
  /** Wall seconds of the run(s) so far, up to this save. */
  seconds: number;
  /** The e2e-qp-log.jsonl lines of steps 1..nextStep, exactly as written. */
  log: string[];
}

const STATE_FORMAT = 'eqat-e2e-qp-state/2';
const STATE_KEY = 'eqat_e2e_qp_state';
/** Tensors of the state file, each (number of step sizes,) f32: the trained step sizes and AdamW's moments. */
const STATE_TENSORS = ['scales', 'exp_avg', 'exp_avg_sq'] as const;

function fingerprintOf(o: E2eQpOptions, data: DataIdentity): Fingerprint {
  const recipe: Record<string, unknown> = {};
  const values = o as unknown as Record<string, unknown>;
  for (const key of Object.keys(e2eQpDefaults(4))) recipe[key] = values[key];
  return { recipe, inputs: { model: modelIdentity(o.model), data } };
}

/** The first difference between a saved fingerprint and this run's, in words; null when equal. */
function fingerprintDifference(saved: Fingerprint, now: Fingerprint, settingName: (key: string) => string): string | null {
  const show = (v: unknown): string => (v === undefined ? 'absent' : JSON.stringify(v));
  for (const key of new Set([...Object.keys(now.recipe), ...Object.keys(saved.recipe ?? {})])) {
    const a = saved.recipe?.[key];
    const b = now.recipe[key];
    if (JSON.stringify(a) !== JSON.stringify(b)) return `${settingName(key)} is ${show(a)} in the saved state, ${show(b)} now`;
  }
  return inputDifference(saved.inputs, now.inputs, 'the training data', 'in the saved state');
}

export function kebab(key: string): string {
  return key.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase());
}

/** Reads a state file's metadata; any problem is an error naming the file and how to start over. */
function readSavedState(path: string): SavedState {
  const fail = (problem: string): never => {
    throw stateError(path, problem);
  };
  let st: SafetensorsFile | null = null;
  try {
    st = SafetensorsFile.open(path);
    const text = st.metadata[STATE_KEY];
    if (text === undefined) fail(`no "${STATE_KEY}" entry in its metadata`);
    let state: SavedState;
    try {
      state = JSON.parse(text!) as SavedState;
    } catch (e) {
      return fail(`its metadata is not valid JSON: ${(e as Error).message}`);
    }
    if (!isJsonObject(state) || state.format !== STATE_FORMAT) fail(`not a ${STATE_FORMAT} state`);
    const { nextStep, totalSteps, log } = state;
    if (!Number.isSafeInteger(nextStep) || !Number.isSafeInteger(totalSteps) || nextStep < 1 || nextStep > totalSteps) {
      fail(`bad step counts (next step ${String(nextStep)} of ${String(totalSteps)})`);
    }
    if (typeof state.firstLoss !== 'number' || typeof state.lastLoss !== 'number' || typeof state.seconds !== 'number') fail('no losses or time');
    if (!Array.isArray(log) || log.length !== nextStep || !log.every((l) => typeof l === 'string')) fail('its log does not match its step count');
    if (!isJsonObject(state.fingerprint) || !isJsonObject(state.fingerprint.recipe)) fail('no fingerprint of the run');
    for (const name of STATE_TENSORS) {
      if (!st.has(name)) fail(`no tensor '${name}'`);
      const info = st.info(name);
      if (info.dtype !== 'F32' || info.shape.length !== 1) fail(`tensor '${name}' is ${info.dtype} [${info.shape.join(', ')}], expected F32 [n]`);
    }
    return state;
  } catch (e) {
    const msg = (e as Error).message;
    if (msg.startsWith(`${path}: cannot resume`)) throw e;
    throw stateError(path, msg.startsWith(`${path}: `) ? msg.slice(path.length + 2) : msg);
  } finally {
    st?.close();
  }
}

/** The error for a state file that cannot be used, naming the file and how to start over. */
function stateError(path: string, problem: string): Error {
  return unusableStateError(path, 'E2E-QP', problem);
}

/** Loads the saved step sizes and moments into the optimizer state (sizes checked against the model). */
function loadSavedTensors(path: string, state: ScaleState): void {
  let st: SafetensorsFile | null = null;
  try {
    st = SafetensorsFile.open(path);
    const targets = [state.params, state.m, state.v];
    for (let i = 0; i < STATE_TENSORS.length; i++) {
      const name = STATE_TENSORS[i]!;
      const n = st.info(name).shape[0]!;
      const want = targets[i]!.buffer.length;
      if (n !== want) throw stateError(path, `'${name}' holds ${n} step sizes, the model has ${want}`);
      st.readF32(name, targets[i]!.buffer);
    }
  } catch (e) {
    const msg = (e as Error).message;
    if (msg.startsWith(`${path}: cannot resume`)) throw e;
    throw stateError(path, msg.startsWith(`${path}: `) ? msg.slice(path.length + 2) : msg);
  } finally {
    st?.close();
  }
}

/**
 * Runs E2E-QP into `o.out`, holding it (src/io/output.ts) for the run unless the caller does
 * (`o.output`): an existing output without `force`, an output among the inputs and one another
 * run holds are refused first; SIGINT / SIGTERM stop it at the next step saying what was saved.
 */
export async function runE2eQp(o: E2eQpOptions): Promise<E2eQpResult> {
  throwIfAborted(o.signal);
  if (!existsSync(o.model) || !existsSync(o.data)) {
    // hub model and dataset names (src/io/hub.ts, src/data/named-datasets.ts), after the settings' checks
    validateE2eQp(o);
    o = { ...o, model: await resolveModel(o.model, { flag: '--model', quiet: o.quiet }), data: await resolveCorpus(o.data, { flag: '--data', quiet: o.quiet }) };
  }
  const inputs = [{ flag: '--model', path: o.model }, { flag: '--data', path: o.data }];
  const companions = [resolve(o.out) + '.partial'];
  const output = o.output ?? claimOutput({ out: o.out, flag: '--out', force: o.force ?? false, inputs, command: 'eqat e2e-qp', companions, resumable: true }, { interruptible: true });
  try {
    return await e2eQp(o, output);
  } catch (e) {
    throw explainSystemError(e, output.out, true);
  } finally {
    if (!o.output) output.release();
  }
}

async function e2eQp(o: E2eQpOptions, output: OutputClaim): Promise<E2eQpResult> {
  const t0 = performance.now();
  const out = output.out;
  const partial = out + '.partial';
  const kept = output.kept; // what the caller's earlier phases kept
  const keep = (step: number, of: number): void => {
    output.kept = [kept, step > 0 ? `the E2E-QP state after step ${step} of ${of} in ${partial}/` : ''].filter((k) => k !== '').join('; ');
  };
  validateE2eQp(o);
  const saveEvery = o.saveEvery ?? E2E_QP_SAVE_EVERY;
  checkInputPath('--model', o.model, 'directory', 'a quantized model directory (the output of block-ap)');
  checkInputPath('--data', o.data, 'file', E2E_QP_DATA_FILES);
  const src = WeightSource.open(o.model);
  let trainer: E2eTrainer<Tensor> | E2eTrainer<DeviceArray> | null = null;
  try {
    if (!src.quant) throw new Error(`--model ${o.model}: not a quantized checkpoint; run block-ap first (or use eqat quantize)`);
    src.checkTensors();
    checkPositions(src.cfg, o.seqlen, `--seqlen ${o.seqlen}`, o.model);
    const samples = await trainingSamples(o); // a bad --data fails here, before anything is written
    // an interrupted run: resume it if it is this run
    const statePath = join(partial, E2E_QP_STATE_FILE);
    if (o.restart) rmSync(partial, { recursive: true, force: true });
    const fingerprint = fingerprintOf(o, samples.data);
    const saved = existsSync(statePath) ? readSavedState(statePath) : null;
    if (saved) {
      const diff = fingerprintDifference(saved.fingerprint, fingerprint, o.settingName ?? ((key) => `${key} (--${kebab(key)})`));
      if (diff) throw otherRunError(partial, 'E2E-QP', diff);
    }
    const cfg = src.cfg;
    const model = PackedModel.load(src);
    const state = new ScaleState(model.blocks);

    const device = o.device ?? 'cpu';
    const precision: Precision = o.precision ?? (device === 'cuda' ? 'bf16' : 'f32');
    trainer = trainerOn(device, model, state, o.microBatchSize, o.seqlen, precision);
    const mb = o.microBatchSize;
    const T = o.seqlen;
    const L = cfg.numLayers;
    const accum = o.batchSize / mb;
    const stepsPerEpoch = Math.floor(samples.count / o.batchSize);
    const totalSteps = stepsPerEpoch * o.epochs;
    const warmup = Math.ceil(o.warmupRatio * totalSteps);
    const logPath = join(partial, 'e2e-qp-log.jsonl');
    let step = 0;
    let firstLoss = NaN;
    let lastLoss = NaN;
    let log: string[] = [];
    let secondsBefore = 0; // of the interrupted runs, up to their last save
    if (saved) {
      if (saved.totalSteps !== totalSteps) {
        throw stateError(statePath, `it is for ${saved.totalSteps} steps, this run has ${totalSteps}`);
      }
      loadSavedTensors(statePath, state);
      step = saved.nextStep;
      keep(step, totalSteps);
      firstLoss = saved.firstLoss;
      lastLoss = saved.lastLoss;
      secondsBefore = saved.seconds;
      log = saved.log;
      // the log as of the save (a killed run may have logged steps after it)
      writeFileSync(logPath + '.tmp', log.map((l) => l + '\n').join(''));
      renameSync(logPath + '.tmp', logPath);
    } else {
      rmSync(partial, { recursive: true, force: true });
      mkdirSync(partial, { recursive: true });
    }
    const resumedFrom = step;
    const elapsed = (): number => secondsBefore + (performance.now() - t0) / 1000;
    let lastSave = performance.now();
    const emit = reporter(o);
    trainer.fromHost(); // the state to start from: loaded, or the checkpoint's step sizes
    const save = (): void => {
      trainer!.toHost();
      const meta: SavedState = { format: STATE_FORMAT, fingerprint, nextStep: step, totalSteps, firstLoss, lastLoss, seconds: elapsed(), log };
      const tensors = [state.params, state.m, state.v].map((a, i) => ({ name: STATE_TENSORS[i]!, dtype: 'F32' as const, shape: [a.buffer.length], data: a.buffer }));
      writeSafetensors(statePath, tensors, { [STATE_KEY]: JSON.stringify(meta) });
      lastSave = performance.now();
      keep(step, totalSteps);
      emit({ type: 'e2e-save', step, of: totalSteps, path: statePath });
    };

    emit({ type: 'phase', phase: 'e2e-qp', out, resumedFrom, reused: false });
    emit({ type: 'e2e-start', step, of: totalSteps });
    const run = trainer;
    const microStep = (sample: number): number =>
      run.microStep(samples.ids.subarray(sample * T, (sample + mb) * T), samples.labels.subarray(sample * T, (sample + mb) * T), accum);

    // optimizer step `step` uses samples [s·batch, (s+1)·batch) with s = step mod steps per
    // epoch: the order depends on the seed only, so a resumed run sees the same batches
    while (step < totalSteps) {
      const s = step % stepsPerEpoch;
      const ts = performance.now();
      run.zeroGrads();
      let loss = 0;
      for (let a = 0; a < accum; a++) loss += microStep(s * o.batchSize + a * mb) / accum;
      if (!Number.isFinite(loss)) {
        run.toHost(); // the step sizes as that step left them, into the model's views
        const first = s * o.batchSize;
        const culprit = firstNonFiniteScale(model) ?? 'none: every step size is finite (the weights were checked at load), the forward overflowed; lower --lr';
        throw new Error(
          `e2e-qp step ${step + 1} (samples ${first}..${first + o.batchSize - 1}): loss is ${loss}; first non-finite value: ${culprit}; stopping (nothing written)`,
        );
      }
      const gradNorm = run.clip(o.maxGradNorm);
      const lr = warmupCosineLr(o.lr, step, totalSteps, warmup);
      run.adamw({
        lr,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        weightDecay: o.weightDecay,
        step: step + 1,
      });
      if (step === 0) firstLoss = loss;
      lastLoss = loss;
      const entry: E2eQpStepLog = { step: step + 1, loss, lr, gradNorm, seconds: (performance.now() - ts) / 1000 };
      const line = JSON.stringify(entry);
      appendFileSync(logPath, line + '\n');
      log.push(line);
      step++;
      emit({ type: 'e2e-step', step, of: totalSteps, loss, lr, gradNorm, seconds: entry.seconds });
      const due = step % saveEvery === 0 || step === totalSteps || performance.now() - lastSave >= E2E_QP_SAVE_SECONDS * 1000;
      if (saveEvery > 0 && due) save();
      o.onStep?.(step);
      await interruptionPoint(o.signal);
    }
    run.capture.noteIfEager(o.quiet ?? false);
    run.toHost(); // the trained step sizes, into the model the checkpoint is written from

    // write the checkpoint: same integers and zero points, trained step sizes (f16)
    const nShards = shardCount(cfg);
    const names: string[][] = [];
    const { bits, groupSize } = model.quant;
    for (let i = 0; i < L; i++) {
      const b = model.blocks[i]!;
      const frozen = {} as FrozenLinears;
      for (const [key] of BLOCK_LINEARS) {
        const w = b.weights[key];
        frozen[key] = { q: unpackQweight(w.qweight, w.O, w.I, bits), scaleF16: scalesToF16(b.scales[key].f32).f16, zero: w.zeros };
      }
      const tensors = blockShardTensors(i, cfg, frozen, b.params, bits, groupSize);
      writeSafetensors(join(partial, shardName(i, nShards)), tensors);
      names.push(tensors.map((t) => t.name));
    }
    const head = headShardTensors(src.safetensors, cfg);
    writeSafetensors(join(partial, shardName(L, nShards)), head);
    names.push(head.map((t) => t.name));
    writeCheckpointMetadata(partial, o.model, bits, groupSize, names);
    const previous = existsSync(join(o.model, 'eqat-recipe.json'))
      ? (JSON.parse(readFileSync(join(o.model, 'eqat-recipe.json'), 'utf8')) as Record<string, unknown>)
      : null;
    const seconds = elapsed();
    writeJsonAtomic(join(partial, 'eqat-recipe.json'), {
      eqat: eqatVersion(),
      phase: 'e2e-qp',
      previous,
      ...(o.record ?? {}),
      e2e_qp: { recipe: { ...recipeOf(o) }, device, precision, steps: step, first_loss: firstLoss, last_loss: lastLoss, seconds, peak_rss_bytes: peakRssBytes() },
    });
    for (const [name, value] of Object.entries(o.files ?? {})) writeJsonAtomic(join(partial, name), value);
    if (existsSync(join(o.model, 'block-ap-log.jsonl'))) {
      copyFileSync(join(o.model, 'block-ap-log.jsonl'), join(partial, 'block-ap-log.jsonl'));
    }
    // the state and any temporary file of a save cut short go; then the rename makes it visible
    rmSync(statePath, { force: true });
    writeReport(partial, out);
    removeTemporaries(partial);
    publishOutput(output, partial);
    emit({ type: 'done', phase: 'e2e-qp', out, seconds });
    return { out, steps: step, firstLoss, lastLoss, seconds, packedBytes: model.packedBytes(), resumedFrom };
  } finally {
    trainer?.free();
    src.close();
  }
}

/** The first NaN/Inf step size of the model, in words (block, linear, element); null when all are finite. */
function firstNonFiniteScale(model: PackedModel): string | null {
  for (let i = 0; i < model.blocks.length; i++) {
    for (const [key, module] of BLOCK_LINEARS) {
      const t = model.blocks[i]!.scales[key];
      const at = firstNonFinite(t);
      if (at >= 0) return `step size of block ${i + 1}/${model.blocks.length} ${module} holds ${t.f32[at]} at element ${at}`;
    }
  }
  return null;
}

function recipeOf(o: E2eQpOptions): E2eQpRecipe {
  const recipe: Record<string, unknown> = { model: o.model, data: o.data };
  const values = o as unknown as Record<string, unknown>;
  for (const key of Object.keys(e2eQpDefaults(4))) recipe[key] = values[key];
  return recipe as unknown as E2eQpRecipe;
}
