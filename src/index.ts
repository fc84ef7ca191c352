// eqat as a library: `import { quantize } from 'eqat'`. The functions the `eqat` command runs
// (src/cli/commands.ts calls these same functions), with options objects in place of flags:
//
//   loadModel    a model directory: config, quantization, tokenizer (and the weights, read block by block)
//   blockAp      Block-AP (EfficientQAT phase 1; epochs 0 = round-to-nearest)      `eqat block-ap`
//   e2eQp        E2E-QP on a Block-AP checkpoint (phase 2)                          `eqat e2e-qp`
//   quantize     both phases from a recipe (file and/or options)                   `eqat quantize`
//   evaluate     perplexity on a text, zero-shot task accuracy                     `eqat eval`
//   generate     text from a prompt                                                `eqat generate`
//   exportModel  GGUF (llama.cpp) or ONNX (onnxruntime, transformers.js)           `eqat export`
//   writeReport  an output's report.html (blockAp, e2eQp, quantize write their own) `eqat report`
//
// Defaults are the command's: a setting left out takes the flag's default, from the one home
// of each (the recipe schema and presets of src/pipeline/recipe.ts, the pipeline files). Errors
// name the setting by its flag (`--train-size: must be >= 1, got 0`), as the command does;
// UsageError (and its RecipeError) marks a bad setting, anything else a bad input or the system.
//
// Progress: `onEvent` receives typed events (src/pipeline/events.ts) as the run goes; `progress:
// true` also prints the command's bars and log lines on stderr. Cancellation: `signal` (an
// AbortSignal) stops a training run at its next step, keeping the resumable `<out>.partial/`
// exactly as SIGINT does, and the promise rejects with AbortedError (name 'AbortError') whose
// message and `kept` say what was kept; the same call again resumes. While a run holds its
// output, SIGINT / SIGTERM stop it the same way (InterruptedError), as in the command.
import { resolve } from 'node:path';
import { WeightSource } from './model/weights.js';
import type { ModelConfig } from './model/config.js';
import type { QuantConfig } from './quant/checkpoint-config.js';
import { loadTokenizer, type Tokenizer } from './io/tokenizer.js';
import { checkInputPath } from './io/errors.js';
import { explainSystemError, throwIfAborted } from './io/output.js';
import { native } from './engine/native.js';
import { BF16_NEEDS_CUDA, deviceForCommand, type DeviceFlag } from './engine/cuda.js';
import { UsageError } from './cli/args.js';
import { blockApDefaults, runBlockAp, type BlockApResult } from './pipeline/block-ap.js';
import { e2eQpDefaults, runE2eQp, type E2eQpResult } from './pipeline/e2e-qp.js';
import { resolveRecipeInputs, runQuantize, type QuantizeResult } from './pipeline/quantize.js';
import { resolveModel } from './io/hub.js';
import { EVAL_DEFAULTS, evaluatePerplexity, type EvalResult } from './pipeline/eval.js';
import { evaluateZeroShot, type ZeroShotResult } from './pipeline/zero-shot.js';
import { parseTaskList } from './data/mc-tasks.js';
import { GENERATE_DEFAULTS, generateFromSource } from './pipeline/generate.js';
import { loadRecipeFile, recipeFlagSpecs, type BlockApSettings, type E2eQpSettings, type RecipeOverrides } from './pipeline/recipe.js';
import { exportGguf, GGUF_EMBEDDING_CHOICES, GGUF_TYPE_CHOICES, type GgufExportOptions, type GgufExportReport } from './export/gguf.js';
import { exportOnnx, type OnnxExportOptions, type OnnxExportReport } from './export/onnx.js';
import type { OnEvent } from './pipeline/events.js';

export type { EqatEvent, EqatEventType, OnEvent, Phase } from './pipeline/events.js';
export { AbortedError, InterruptedError } from './io/output.js';
export { UsageError } from './cli/args.js';
export { RecipeError, defaultRecipe, SUPPORTED_BITS } from './pipeline/recipe.js';
export type { QuantizeRecipe, RecipeOverrides, BlockApSettings, E2eQpSettings, E2eQpSection } from './pipeline/recipe.js';
export { progressPrinter } from './cli/progress.js';
export { renderReport, readReportFiles, writeReport, type ReportFiles } from './report/report.js';
export type { ModelConfig, QuantConfig, Tokenizer, BlockApResult, E2eQpResult, QuantizeResult, GgufExportReport, OnnxExportReport, ZeroShotResult };
/** Perplexity of a model on a text (the result of `eqat eval`). */
export type PerplexityResult = EvalResult;

// ---------------------------------------------------------------------------------------------
// Options shared by every run

/** Where a run computes: cpu (default), cuda (an error without a usable GPU), auto (cuda when present). */
export type Device = DeviceFlag;

export interface RunOptions {
  /** Default 'cpu', as the command's --device. */
  device?: Device;
  /** GEMM input precision on CUDA: 'bf16' (the default there) or 'f32'; the CPU computes in f32. */
  precision?: 'f32' | 'bf16';
  /** CPU threads of the native kernels (process-wide; default all cores). */
  threads?: number;
  /** Print the command's progress (bars, Block-AP's log lines) on stderr; default false. */
  progress?: boolean;
  /** Called with every progress event of the run, in order (src/pipeline/events.ts). */
  onEvent?: OnEvent;
}

export interface TrainRunOptions extends RunOptions {
  /** Stops the run at its next step, keeping a resumable `<out>.partial/` (rejects with AbortedError). */
  signal?: AbortSignal;
  /** Replace an existing `out`, once the new output is complete (otherwise an existing one is refused). */
  force?: boolean;
  /** Discard an interrupted run's state instead of resuming it. */
  restart?: boolean;
}

/** The settings actually given: an option set to undefined keeps the default. */
function given<T extends object>(o: T): Partial<T> {
  const r: Partial<T> = {};
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (r as Record<string, unknown>)[k] = v;
  return r;
}

/**
 * The options `o` sets among the keys of `preset` (the settings and seed a run takes), so that
 * `{ ...preset, ...presetOverrides(o, preset) }` is the preset with the caller's values.
 */
function presetOverrides<P extends object>(o: object, preset: P): Partial<P> {
  const r: Partial<P> = {};
  for (const k of Object.keys(preset)) {
    const v = (o as Record<string, unknown>)[k];
    if (v !== undefined) (r as Record<string, unknown>)[k] = v;
  }
  return r;
}

/** The device of a run (throws naming the command when it is unusable), after --threads. */
function runDevice(command: string, o: RunOptions): 'cpu' | 'cuda' {
  const device = deviceForCommand(command, o.device ?? 'cpu');
  if (o.threads !== undefined) {
    if (!Number.isSafeInteger(o.threads) || o.threads < 1) throw new UsageError(`--threads must be an integer >= 1, got ${String(o.threads)}`);
    native().setThreads(o.threads);
  }
  return device;
}

// ---------------------------------------------------------------------------------------------
// Models

/** A model directory (a Hugging Face checkpoint or an eqat output), open for reading. */
export interface EqatModel {
  /** The directory, absolute. */
  readonly dir: string;
  readonly config: ModelConfig;
  /** bits, group size and layout of a quantized checkpoint; null for a full-precision one. */
  readonly quantization: QuantConfig | null;
  readonly tokenizer: Tokenizer;
  /** The weights, read block by block as a run needs them. */
  readonly weights: WeightSource;
  /** Token ids of `text` (special tokens such as bos added unless addSpecialTokens is false). */
  encode(text: string, opts?: { addSpecialTokens?: boolean }): number[];
  /** The text of `ids` (special tokens dropped unless skipSpecialTokens is false). */
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string;
  /** Closes the weight files; the model cannot be used afterwards. */
  close(): void;
}

/**
 * Opens a model directory: config.json, the quantization config, the tokenizer and the
 * safetensors headers (no weights are read yet). Close it when done.
 */
export async function loadModel(dir: string): Promise<EqatModel> {
  dir = await resolveModel(dir, { flag: '--model' }); // a hub name org/name[@revision] (src/io/hub.ts)
  checkInputPath('--model', dir, 'directory', 'a model directory');
  const weights = WeightSource.open(dir);
  let tokenizer: Tokenizer;
  try {
    tokenizer = loadTokenizer(dir);
  } catch (e) {
    weights.close();
    throw e;
  }
  return {
    dir: resolve(dir),
    config: weights.cfg,
    quantization: weights.quant,
    tokenizer,
    weights,
    encode: (text, { addSpecialTokens = true } = {}) => tokenizer.encode(text, { addSpecialTokens }),
    decode: (ids, { skipSpecialTokens = true } = {}) => tokenizer.decode(ids, { skipSpecialTokens }),
    close: () => weights.close(),
  };
}

// ---------------------------------------------------------------------------------------------
// Training

export interface BlockApOptions extends TrainRunOptions, Partial<BlockApSettings> {
  /** Full-precision Hugging Face model directory. */
  model: string;
  /** Output directory (a GPTQ v2 checkpoint). */
  out: string;
  /** Weight bits: 2, 3, 4 or 8. */
  wbits: number;
  /** Calibration text (.txt, .jsonl or .parquet with `text`); required unless epochs is 0. */
  calib?: string | null;
  /** Default: block-ap's --group-size default. */
  groupSize?: number;
  seed?: number;
  /** Bytes of RAM for the activation caches before they go to disk (default: half of RAM). */
  maxRamBytes?: number;
}

/** Block-AP's group size when none is given: the default of `eqat block-ap --group-size`. */
const BLOCK_AP_GROUP_SIZE = recipeFlagSpecs('block-ap')['group-size']!.default as number;

/**
 * Block-AP: quantizes `model` block by block, training each block's weights, norms, step sizes
 * and zero points against the full-precision block; writes a GPTQ v2 checkpoint to `out`.
 * Settings left out take the paper's preset for `wbits` (blockApDefaults), as the command does.
 */
export async function blockAp(o: BlockApOptions): Promise<BlockApResult> {
  throwIfAborted(o.signal);
  const device = runDevice('block-ap', o);
  const { model, out, wbits, calib, groupSize, maxRamBytes, precision, onEvent, signal, force, restart, progress } = o;
  const preset = blockApDefaults(wbits); // every Block-AP setting and the seed
  return runBlockAp({
    ...preset,
    ...presetOverrides(o, preset),
    model,
    out,
    wbits,
    calib: calib ?? null,
    groupSize: groupSize ?? BLOCK_AP_GROUP_SIZE,
    maxRamBytes,
    device,
    precision,
    quiet: !progress,
    onEvent,
    signal,
    force,
    restart,
  });
}

export interface E2eQpOptions extends TrainRunOptions, Partial<E2eQpSettings> {
  /** Quantized model directory (a Block-AP checkpoint). */
  model: string;
  /** Training data: text (.txt, .jsonl/.parquet with `text`) or instructions (.jsonl/.json). */
  data: string;
  /** Output directory. */
  out: string;
  seed?: number;
  /** Save the training state every this many optimizer steps (0 = never); default: e2e-qp's --save-every default. */
  saveEvery?: number;
}

/**
 * E2E-QP: trains only the step sizes of the quantized `model` end to end on `data`; writes the
 * checkpoint to `out`. Settings left out take the paper's preset for the model's bit width
 * (e2eQpDefaults), as the command does.
 */
export async function e2eQp(o: E2eQpOptions): Promise<E2eQpResult> {
  throwIfAborted(o.signal);
  const device = runDevice('e2e-qp', o);
  const model = await resolveModel(o.model, { flag: '--model', quiet: !o.progress });
  checkInputPath('--model', model, 'directory', 'a quantized model directory (the output of block-ap)');
  const probe = WeightSource.open(model);
  const bits = probe.quant?.bits ?? 4; // a full-precision model is refused by the run, naming it
  probe.close();
  const preset = e2eQpDefaults(bits); // every E2E-QP setting and the seed
  return runE2eQp({
    ...preset,
    ...presetOverrides(o, preset),
    model,
    data: o.data,
    out: o.out,
    saveEvery: o.saveEvery,
    device,
    precision: o.precision,
    quiet: !o.progress,
    onEvent: o.onEvent,
    signal: o.signal,
    force: o.force,
    restart: o.restart,
  });
}

export interface QuantizeOptions extends TrainRunOptions, RecipeOverrides {
  /** A recipe file (.json, .yaml, .yml); the other settings given here override its values. */
  recipe?: string;
  /** Block-AP: bytes of RAM for the activation caches before they go to disk (default: half of RAM). */
  maxRamBytes?: number;
  /** E2E-QP: save the training state every this many optimizer steps (0 = never). */
  saveEvery?: number;
}

/**
 * EfficientQAT end to end: Block-AP into `<out>.block-ap`, then E2E-QP into `out`, from a recipe
 * file and/or the settings given (model, calib, out and wbits are required; everything else
 * takes the paper's preset for wbits). The recipe is checked against the model before any work.
 */
export async function quantize(o: QuantizeOptions): Promise<QuantizeResult> {
  throwIfAborted(o.signal);
  const device = runDevice('quantize', o);
  const overrides: RecipeOverrides = given({
    model: o.model,
    calib: o.calib,
    out: o.out,
    wbits: o.wbits,
    groupSize: o.groupSize,
    seed: o.seed,
    blockAp: o.blockAp,
    e2eQp: o.e2eQp,
    eval: o.eval,
  });
  // hub model and dataset names resolve to local paths here (downloading what is missing)
  const recipe = await resolveRecipeInputs(o.recipe !== undefined ? loadRecipeFile(o.recipe) : {}, overrides, o.recipe ?? 'recipe', { quiet: !o.progress });
  return runQuantize(recipe, {
    quiet: !o.progress,
    onEvent: o.onEvent,
    signal: o.signal,
    maxRamBytes: o.maxRamBytes,
    saveEvery: o.saveEvery,
    restart: o.restart,
    force: o.force,
    recipeFile: o.recipe,
    device,
    precision: o.precision,
  });
}

// ---------------------------------------------------------------------------------------------
// Evaluation and generation

/** What to evaluate: perplexity on `data`, zero-shot accuracy on `tasks`, or both (`eqat eval`). */
export interface EvaluateOptions extends RunOptions {
  /** A model directory (full precision or eqat-quantized), or a loaded model. */
  model: string | EqatModel;
  /** Perplexity: a text file (.txt; .jsonl/.parquet documents are joined by blank lines), or a named corpus (wikitext2, c4). */
  data?: string;
  /** Perplexity: window length in tokens; default eval's --seqlen default. */
  seqlen?: number;
  /** Windows (perplexity) or sequences (zero-shot) per forward step; default eval's --batch default. */
  batch?: number;
  /** Perplexity: evaluate only the first N windows. */
  maxWindows?: number;
  /** Zero-shot multiple-choice tasks (lm-evaluation-harness): piqa, arc_easy, arc_challenge, hellaswag, winogrande. */
  tasks?: string[];
  /** Zero-shot: a directory of the tasks' data (eval --task-data); default the hub datasets. */
  taskData?: string;
  /** Zero-shot: evaluate only the first N docs of each task. */
  limit?: number;
}

export interface EvaluateResult {
  /** The model directory evaluated. */
  model: string;
  /** Perplexity on `data`; null when no data was given. */
  perplexity: PerplexityResult | null;
  /** Accuracy per task; null when no tasks were given. */
  zeroShot: ZeroShotResult | null;
}

/**
 * Evaluates a model, as `eqat eval`: perplexity on a text (non-overlapping windows, mean
 * next-token NLL) and/or zero-shot accuracy on tasks (acc, acc_norm with their stderr).
 */
export async function evaluate(o: EvaluateOptions): Promise<EvaluateResult> {
  if (o.data === undefined && o.tasks === undefined) throw new UsageError('evaluate: give data (perplexity) or tasks (zero-shot), or both');
  const tasks = o.tasks !== undefined ? parseTaskList(o.tasks.join(','), '--tasks') : null;
  if (!tasks && (o.taskData !== undefined || o.limit !== undefined)) throw new UsageError(`evaluate: ${o.taskData !== undefined ? '--task-data' : '--limit'} goes with --tasks`);
  const device = runDevice('eval', o);
  const model = typeof o.model === 'string' ? o.model : o.model.dir;
  const batch = o.batch ?? EVAL_DEFAULTS.batch;
  const quiet = !o.progress;
  const perplexity =
    o.data === undefined
      ? null
      : await evaluatePerplexity(model, o.data, {
          seqlen: o.seqlen ?? EVAL_DEFAULTS.seqlen,
          batch,
          maxWindows: o.maxWindows,
          device,
          precision: o.precision,
          quiet,
          onEvent: o.onEvent,
        });
  const zeroShot = tasks && (await evaluateZeroShot(model, { tasks, taskData: o.taskData, limit: o.limit, batch, device, precision: o.precision, quiet }));
  return { model, perplexity, zeroShot };
}

export interface GenerateOptions extends RunOptions {
  /** A model directory, or a loaded model (kept open). */
  model: string | EqatModel;
  prompt: string;
  /** Default generate's --max-new-tokens default. */
  maxNewTokens?: number;
  /** Sampling temperature; 0 (default) is greedy. */
  temperature?: number;
  /** Sampling seed (default 0). */
  seed?: number;
  /** Stop at an end-of-sequence token (default true). */
  stopAtEos?: boolean;
}

export interface GenerateResult {
  /** The generated text (after the prompt), special tokens dropped. */
  text: string;
  /** The prompt's token ids (with bos where the tokenizer adds it). */
  promptIds: number[];
  /** The prompt's ids followed by the generated ones. */
  outputIds: number[];
}

/** Generates text after `prompt` (greedy unless temperature > 0), decoding over a key/value cache. */
export async function generate(o: GenerateOptions): Promise<GenerateResult> {
  const device = runDevice('generate', o);
  if (o.precision === 'bf16' && device !== 'cuda') throw new UsageError(`--precision: ${BF16_NEEDS_CUDA}`);
  const model = typeof o.model === 'string' ? await loadModel(o.model) : o.model;
  try {
    const promptIds = model.encode(o.prompt);
    const outputIds = generateFromSource(
      model.weights,
      promptIds,
      {
        maxNewTokens: o.maxNewTokens ?? GENERATE_DEFAULTS.maxNewTokens,
        temperature: o.temperature ?? GENERATE_DEFAULTS.temperature,
        seed: o.seed ?? GENERATE_DEFAULTS.seed,
        stopAtEos: o.stopAtEos ?? true,
      },
      { device, precision: o.precision },
    );
    return { text: model.decode(outputIds.slice(promptIds.length)), promptIds, outputIds };
  } finally {
    if (typeof o.model === 'string') model.close();
  }
}

// ---------------------------------------------------------------------------------------------
// Export

export interface ExportOptions {
  /** A quantized model directory (eqat output). */
  model: string;
  format: 'gguf' | 'onnx';
  /** A .gguf file, or a directory for onnx. */
  out: string;
  /** Replace an existing output, once the new one is complete. */
  force?: boolean;
  /** GGUF weight type; 'auto' (default) is the exact mapping for the bit width. */
  ggufType?: GgufExportOptions['type'];
  /** GGUF: allow a type that cannot represent the weights exactly. */
  allowLossy?: boolean;
  /** GGUF embeddings / lm_head type; 'auto' (default): f16 when exact, else the checkpoint's own. */
  embeddingType?: GgufExportOptions['embeddingType'];
  /** ONNX: weights in an external data file; default 'auto' (above 1.75 GiB). */
  externalData?: OnnxExportOptions['externalData'];
  /** ONNX: MatMulNBits accuracy_level (0 default: exact; 4: int8 activations, faster on CPU). */
  accuracyLevel?: OnnxExportOptions['accuracyLevel'];
}

/** The export's report: GgufExportReport for gguf, OnnxExportReport for onnx. */
export type ExportReport = GgufExportReport | OnnxExportReport;

/** Writes a quantized checkpoint for another runtime: GGUF (llama.cpp) or ONNX (onnxruntime, transformers.js). */
export async function exportModel(o: ExportOptions & { format: 'gguf' }): Promise<GgufExportReport>;
export async function exportModel(o: ExportOptions & { format: 'onnx' }): Promise<OnnxExportReport>;
export async function exportModel(o: ExportOptions): Promise<ExportReport>;
export async function exportModel(o: ExportOptions): Promise<ExportReport> {
  if (o.format !== 'gguf' && o.format !== 'onnx') throw new UsageError(`--format must be one of gguf, onnx, got ${String(o.format)}`);
  const model = await resolveModel(o.model, { flag: '--model' });
  checkInputPath('--model', model, 'directory', 'a quantized model directory (eqat output)');
  try {
    if (o.format === 'onnx') {
      return await exportOnnx(model, o.out, { externalData: o.externalData ?? 'auto', accuracyLevel: o.accuracyLevel, force: o.force ?? false });
    }
    return await exportGguf(model, o.out, {
      type: o.ggufType ?? GGUF_TYPE_CHOICES[0],
      allowLossy: o.allowLossy ?? false,
      embeddingType: o.embeddingType ?? GGUF_EMBEDDING_CHOICES[0],
      force: o.force ?? false,
    });
  } catch (e) {
    throw explainSystemError(e, resolve(o.out), false);
  }
}
