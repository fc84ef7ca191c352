// `eqat quantize`: the whole EfficientQAT method behind one command — Block-AP, then E2E-QP
// on the Block-AP checkpoint — from flags and/or a recipe file (JSON or YAML, validated, with
// the paper's presets per bit width). The recipe is fully checked against the model before
// any work. Block-AP's checkpoint is kept at `<out>.block-ap`; the final one is `<out>`.
// Rerunning an interrupted command resumes: a finished Block-AP phase is reused when its record
// shows the same Block-AP recipe on the same model and calibration data by content (the
// identities it recorded: src/io/fingerprint.ts), an interrupted one continues after its last
// finished block, and an interrupted E2E-QP phase continues from its last saved step
// (`<out>.partial/`). A Block-AP checkpoint of other settings or inputs is refused naming what
// differs; `restart` discards it (when this command made it) and any interrupted state.
// The eval section's evaluation runs on the published output and then, the same way, on the
// full-precision model (eval.baseline), each written into <out>/eqat-eval.json as it finishes:
// a baseline that fails leaves the checkpoint and its figures as they are, with the reason.
import { existsSync, readFileSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadConfig } from '../io/hf-config.js';
import { checkInputPath } from '../io/errors.js';
import { writeJsonAtomic } from '../io/quant-checkpoint.js';
import { inputIdentity, inputDifference } from '../io/fingerprint.js';
import { isJsonObject } from '../io/errors.js';
import { mergeRecipe, recipeToJson, validateRecipe, validateRecipeForModel, type EvalSection, type QuantizeRecipe, type RecipeOverrides } from './recipe.js';
import { evaluatePerplexity, type EvalResult } from './eval.js';
import { evaluateZeroShot, loadTasks, type ZeroShotResult } from './zero-shot.js';
import { parseTaskList, type McTask } from '../data/mc-tasks.js';
import { isDatasetName, namedDataset } from '../data/named-datasets.js';
import { UsageError } from '../cli/args.js';
import { resolveModel } from '../io/hub.js';
import { resolveCorpus } from '../data/named-datasets.js';
import { runBlockAp, type BlockApPhases } from './block-ap.js';
import { checkTrainingData, kebab, runE2eQp } from './e2e-qp.js';
import { eqatVersion } from '../engine/version.js';
import { AbortedError, claimOutput, describeSystemError, explainSystemError, InterruptedError, interruptionPoint, publishOutput, throwIfAborted, type OutputClaim } from '../io/output.js';
import { reporter } from '../cli/progress.js';
import { writeReport } from '../report/report.js';
import type { OnEvent } from './events.js';

export interface QuantizeResult {
  out: string;
  blockApOut: string;
  blockApSeconds: number;
  /** Block-AP's seconds by phase (runBlockAp's), null when an earlier run's checkpoint was reused. */
  blockApPhases: BlockApPhases | null;
  e2eQpSeconds: number;
  /** Of e2eQpSeconds, the training steps (the rest: the data, the packed model's upload, the output). */
  e2eQpTrainSeconds: number;
  /** E2E-QP steps restored from an interrupted run's saved state; 0 when it started from scratch. */
  e2eQpResumedFrom: number;
  /** The evaluation of the output the recipe's eval section asks for (also in <out>/eqat-eval.json); null when it asks for none. */
  eval: QuantizeEval | null;
  seconds: number;
}

/** The figures of one model: perplexity per dataset and the zero-shot result. */
export interface EvalFigures {
  model: string;
  /** By dataset name or file, in the order of eval.ppl. */
  perplexity: Record<string, EvalResult>;
  zeroShot: ZeroShotResult | null;
  seconds: number;
}

/**
 * eqat-eval.json: the figures of the output (model: the output directory) and, with
 * eval.baseline, those of the full-precision model on the same windows, tasks and settings
 * (`baseline`, model: its directory). Without eval.baseline neither key below is there.
 */
export interface QuantizeEval extends EvalFigures {
  /** The full-precision model's figures; null when its evaluation failed (baselineError says why). */
  baseline?: EvalFigures | null;
  /** Why the evaluation of the full-precision model failed. */
  baselineError?: string;
}

/** Merges and validates a recipe (file values, then flag overrides) against the model. */
export function resolveRecipe(fromFile: RecipeOverrides, fromFlags: RecipeOverrides, where: string): QuantizeRecipe {
  const r = mergeRecipe(fromFile, fromFlags, where);
  validateRecipe(r, where);
  checkInputPath(`${where}: model (--model)`, r.model, 'directory', 'a Hugging Face model directory');
  validateRecipeForModel(r, loadConfig(r.model), where);
  return r;
}

/**
 * resolveRecipe for recipes that name a hub model (`org/name[@revision]`) or datasets (calib,
 * e2e_qp.data: wikitext2, c4, redpajama): the recipe is checked first, then the names resolve to
 * local paths through the Hugging Face cache, downloading what is missing (src/io/hub.ts,
 * src/data/named-datasets.ts), the model checked against the recipe before its weights are
 * downloaded; the result holds the local paths. Local paths pass through as resolveRecipe's.
 */
export async function resolveRecipeInputs(fromFile: RecipeOverrides, fromFlags: RecipeOverrides, where: string, hub: { quiet?: boolean } = {}): Promise<QuantizeRecipe> {
  const r = mergeRecipe(fromFile, fromFlags, where);
  validateRecipe(r, where);
  const model = await resolveModel(r.model, {
    ...hub,
    flag: `${where}: model (--model)`,
    beforeWeights: (dir) => validateRecipeForModel(r, loadConfig(dir), where),
  });
  const calib = await resolveCorpus(r.calib, { ...hub, flag: `${where}: calib (--calib)` });
  const data = r.e2eQp.data === null || r.e2eQp.epochs === 0 ? r.e2eQp.data : await resolveCorpus(r.e2eQp.data, { ...hub, flag: `${where}: e2e_qp.data (--e2e-qp-data)` });
  return resolveRecipe({ ...r, model, calib, e2eQp: { ...r.e2eQp, data } }, {}, where);
}

export interface QuantizeOptions {
  /** No progress on stderr (the CLI's bars and log lines). */
  quiet?: boolean;
  /** Called with every progress event of both phases (src/pipeline/events.ts), in order. */
  onEvent?: OnEvent;
  /**
   * Cancellation: once aborted, the phase running stops at its next step (as for SIGINT),
   * keeping what it finished for a rerun to resume, and the run rejects with AbortedError.
   */
  signal?: AbortSignal;
  /** RAM budget of Block-AP's activation caches, bytes. */
  maxRamBytes?: number;
  /** E2E-QP: save its training state every this many steps (runE2eQp's saveEvery). */
  saveEvery?: number;
  /**
   * Discard the state of interrupted phases (`<out>.block-ap.partial/`, `<out>.partial/`) and a
   * Block-AP checkpoint of this command made from other settings or inputs, and run them from the start.
   */
  restart?: boolean;
  /** Where both phases compute (default cpu), and their GEMM precision on CUDA (default bf16). */
  device?: 'cpu' | 'cuda';
  precision?: 'f32' | 'bf16';
  /** Replace an existing `out` (once the new checkpoint is complete). */
  force?: boolean;
  /** The recipe file the recipe came from, an input never to be written over. */
  recipeFile?: string;
}

/**
 * Runs both phases into `r.out`, holding it (src/io/output.ts) for the whole command: an
 * existing output without `force`, an output among the inputs and one another run holds are
 * refused first; SIGINT / SIGTERM (and an aborted `o.signal`) stop it at the next step saying
 * what was kept.
 */
export async function runQuantize(r: QuantizeRecipe, o: QuantizeOptions = {}): Promise<QuantizeResult> {
  throwIfAborted(o.signal);
  const out = resolve(r.out);
  const inputs = [
    { flag: 'model (--model)', path: r.model },
    { flag: 'calib (--calib)', path: r.calib },
    ...(r.e2eQp.data ? [{ flag: 'e2e_qp.data (--e2e-qp-data)', path: r.e2eQp.data }] : []),
    ...(o.recipeFile ? [{ flag: '--recipe', path: o.recipeFile }] : []),
  ];
  const companions = ['.partial', '.block-ap', '.block-ap.partial'].map((x) => out + x);
  const output = claimOutput({ out: r.out, flag: 'out (--out)', force: o.force ?? false, inputs, command: 'eqat quantize', companions, resumable: true }, { interruptible: true });
  try {
    return await quantize(r, o, output);
  } catch (e) {
    throw explainSystemError(e, out, true);
  } finally {
    output.release();
  }
}

async function quantize(
  r: QuantizeRecipe,
  { quiet = false, onEvent, signal, maxRamBytes, saveEvery, restart = false, device, precision }: QuantizeOptions,
  output: OutputClaim,
): Promise<QuantizeResult> {
  const t0 = performance.now();
  const out = output.out;
  // E2E-QP's own data is read now, not after Block-AP (the calibration file is Block-AP's to check)
  if (r.e2eQp.epochs > 0 && r.e2eQp.data) await checkTrainingData('e2e_qp.data (--e2e-qp-data)', r.e2eQp.data, r.e2eQp.dataFormat);
  // and so are the evaluation's inputs
  const evalPlan = await planEval(r.eval, quiet);
  const bapOut = out + '.block-ap';
  const b = r.blockAp;
  let blockApSeconds = 0;
  let blockApPhases: BlockApPhases | null = null;
  const bapRecipeFile = join(bapOut, 'eqat-recipe.json');
  const unlike = existsSync(bapOut) ? blockApMismatch(bapRecipeFile, r) : null;
  if (unlike && !(restart && unlike.ours)) {
    throw new Error(`${bapOut}: a Block-AP checkpoint ${unlike.problem}; ${unlike.ours ? 'pass --restart to discard it and run Block-AP again, or' : 'remove it or'} choose another --out`);
  }
  if (unlike) rmSync(bapOut, { recursive: true, force: true });
  const sameBlockAp = existsSync(bapOut);
  if (!sameBlockAp) {
    const t = performance.now();
    ({ phases: blockApPhases } = await runBlockAp({
      model: r.model,
      calib: r.calib,
      out: bapOut,
      wbits: r.wbits,
      groupSize: r.groupSize,
      seed: r.seed,
      ...b,
      quiet,
      onEvent,
      signal,
      maxRamBytes,
      device,
      precision,
      restart,
      // the Block-AP checkpoint is marked with the part of the recipe that produced it (for reuse
      // on rerun) before it is published: marked after, a full disk or a kill in between left a
      // checkpoint the rerun refused as not made by eqat quantize
      record: { quantize: blockApPart(r) },
    }));
    blockApSeconds = (performance.now() - t) / 1000;
  } else {
    reporter({ quiet, onEvent })({ type: 'phase', phase: 'block-ap', out: bapOut, resumedFrom: 0, reused: true });
  }
  output.kept = `the Block-AP checkpoint in ${bapOut}/`;
  let e2eQpSeconds = 0;
  let e2eQpResumedFrom = 0;
  let e2eQpTrainSeconds = 0;
  const e = r.e2eQp;
  const record = { quantize_recipe: recipeToJson(r), versions: eqatVersion() };
  // the output is complete when it is published: the command's record and recipe.json are
  // written before (after, a full disk or a kill in between published an output without them,
  // which the rerun refused as an existing output)
  const files = { 'recipe.json': recipeToJson(r) };
  if (e.epochs > 0) {
    const t = performance.now();
    ({ resumedFrom: e2eQpResumedFrom, seconds: e2eQpTrainSeconds } = await runE2eQp({ ...e, model: bapOut, data: e.data ?? r.calib, out, seed: r.seed, quiet, onEvent, signal, record, files, saveEvery, restart, settingName: quantizeSettingName, device, precision, output }));
    e2eQpSeconds = (performance.now() - t) / 1000;
  } else {
    const rec = JSON.parse(readFileSync(bapRecipeFile, 'utf8')) as Record<string, unknown>;
    writeJsonAtomic(bapRecipeFile, { ...rec, ...record });
    for (const [name, value] of Object.entries(files)) writeJsonAtomic(join(bapOut, name), value);
    writeReport(bapOut, out);
    publishOutput(output, bapOut);
  }
  output.kept = `the quantized model in ${out}/`;
  let evaluation: QuantizeEval | null;
  try {
    evaluation = await evaluateOutput(output, r.model, r.eval, evalPlan, { quiet, signal, device, precision });
    if (evaluation) writeReport(out); // again, now with the evaluation
  } catch (e) {
    if (e instanceof InterruptedError || e instanceof AbortedError) throw e;
    const sys = describeSystemError(e);
    const why = sys ? `cannot write ${sys.path ?? out}: ${sys.what}` : (e as Error).message;
    throw new Error(`${why}; the quantized model in ${out}/ is complete${sys ? `; ${sys.fix}` : ''}; ${output.whatNext}`, { cause: e });
  }
  return { out, blockApOut: bapOut, blockApSeconds, blockApPhases, e2eQpSeconds, e2eQpTrainSeconds, e2eQpResumedFrom, eval: evaluation, seconds: (performance.now() - t0) / 1000 };
}

/** The pieces of the eval section, checked before any work: the tasks with their data read, and the perplexity inputs. */
interface EvalPlan {
  tasks: McTask[] | null;
  ppl: string[];
}

/**
 * Checks the eval section's inputs before Block-AP: every task's data is read (src/data/mc-tasks.ts)
 * and every perplexity entry is a dataset with a perplexity protocol or a file that is there.
 */
async function planEval(e: EvalSection, quiet: boolean): Promise<EvalPlan> {
  const tasks = e.tasks === null ? null : parseTaskList(e.tasks, 'eval.tasks (--eval-tasks)');
  if (tasks) await loadTasks(tasks, e.taskData ?? undefined, e.limit || undefined, { quiet });
  const ppl = e.ppl === null ? [] : e.ppl.split(',').map((x) => x.trim()).filter((x) => x !== '');
  for (const p of ppl) {
    if (isDatasetName(p)) {
      if (!namedDataset(p)!.eval) throw new UsageError(`eval.ppl (--eval-ppl): ${p} is a calibration dataset with no perplexity protocol; use wikitext2, c4 or a file`);
    } else {
      checkInputPath('eval.ppl (--eval-ppl)', p, 'file', 'a dataset name (wikitext2, c4) or a .txt, .jsonl or .parquet file');
    }
  }
  return { tasks, ppl };
}

interface EvalRunOptions {
  quiet: boolean;
  signal?: AbortSignal;
  device?: 'cpu' | 'cuda';
  precision?: 'f32' | 'bf16';
}

/** The eval section's perplexities and tasks on one model (the output or the full-precision one). */
async function evaluateModel(model: string, e: EvalSection, plan: EvalPlan, o: EvalRunOptions): Promise<EvalFigures> {
  const t0 = performance.now();
  const perplexity: Record<string, EvalResult> = {};
  for (const p of plan.ppl) perplexity[p] = await evaluatePerplexity(model, p, { seqlen: e.pplSeqlen, batch: e.batch, quiet: o.quiet, device: o.device, precision: o.precision });
  const zeroShot = plan.tasks
    ? await evaluateZeroShot(model, { tasks: plan.tasks, taskData: e.taskData ?? undefined, limit: e.limit || undefined, batch: e.batch, quiet: o.quiet, device: o.device, precision: o.precision })
    : null;
  return { model, perplexity, zeroShot, seconds: (performance.now() - t0) / 1000 };
}

/**
 * The `eqat eval` commands that measure on `model` what the eval section asks for ("eqat eval
 * --model M --data D --seqlen S --tasks T and eqat eval ..."), '' when it asks for nothing: what
 * a run stopped after publishing its output tells a person to run.
 */
function evalCommands(model: string, e: EvalSection, plan: EvalPlan): string {
  const tasks = plan.tasks ? ` --tasks ${plan.tasks.map((t) => t.name).join(',')}${e.taskData ? ` --task-data ${e.taskData}` : ''}${e.limit ? ` --limit ${e.limit}` : ''}` : '';
  const runs = plan.ppl.length > 0 ? plan.ppl.map((p, i) => `eqat eval --model ${model} --data ${p} --seqlen ${e.pplSeqlen}${i === 0 ? tasks : ''}`) : tasks ? [`eqat eval --model ${model}${tasks}`] : [];
  return runs.join(' and ');
}

/**
 * Runs the evaluation of the eval section on the published output of `output`, writes it into
 * OUT/eqat-eval.json, then (eval.baseline) the same on the full-precision `model`, written
 * beside it. A baseline that fails is recorded (baselineError, a warning on stderr) and the
 * command goes on; an interruption still stops it. A rerun of the same command would refuse the
 * published output, so `output.whatNext` says, as it goes, which `eqat eval` runs what is left.
 */
async function evaluateOutput(output: OutputClaim, model: string, e: EvalSection, plan: EvalPlan, o: EvalRunOptions): Promise<QuantizeEval | null> {
  if (!plan.tasks && plan.ppl.length === 0) return null;
  const out = output.out;
  output.whatNext = `to evaluate it: ${evalCommands(out, e, plan)}`;
  const result: QuantizeEval = await evaluateModel(out, e, plan, o);
  const file = join(out, 'eqat-eval.json');
  writeJsonAtomic(file, result);
  if (!e.baseline) return result;
  output.whatNext = `${out}/eqat-eval.json holds its evaluation; to evaluate the full-precision model: ${evalCommands(resolve(model), e, plan)}`;
  await interruptionPoint(o.signal);
  try {
    result.baseline = await evaluateModel(resolve(model), e, plan, o);
  } catch (err) {
    if (err instanceof InterruptedError || err instanceof AbortedError) throw err;
    result.baseline = null;
    result.baselineError = (err as Error).message;
    console.error(`eqat quantize: warning: the evaluation of the full-precision model ${model} failed (${result.baselineError}); the quantized model in ${out}/ and its evaluation are complete; eqat eval --model ${model} measures it on its own`);
  }
  writeJsonAtomic(file, result);
  return result;
}

/**
 * Why the Block-AP checkpoint whose record is `recipeFile` cannot be reused for recipe `r`
 * (null when it can): its record is unreadable, it was made by other settings, or from another
 * model or calibration data (compared by content). `ours`: made by `eqat quantize` (it carries
 * the quantize record), so that --restart may discard it.
 */
function blockApMismatch(recipeFile: string, r: QuantizeRecipe): { problem: string; ours: boolean } | null {
  let rec: unknown;
  try {
    rec = JSON.parse(readFileSync(recipeFile, 'utf8'));
  } catch (e) {
    return { problem: `whose record ${recipeFile} cannot be read (${(e as Error).message}) is there`, ours: existsSync(recipeFile) };
  }
  if (!isJsonObject(rec) || rec['quantize'] === undefined) return { problem: 'not made by eqat quantize is there', ours: false };
  if (JSON.stringify(rec['quantize']) !== JSON.stringify(blockApPart(r))) return { problem: 'from a different recipe is there', ours: true };
  const diff = inputDifference(rec['inputs'], inputIdentity(r.model, r.blockAp.epochs > 0 ? r.calib : null), 'the calibration data', 'when it was made');
  return diff ? { problem: `from other inputs is there: ${diff}`, ours: true } : null;
}

function blockApPart(r: QuantizeRecipe): unknown {
  return { model: resolve(r.model), calib: resolve(r.calib), wbits: r.wbits, groupSize: r.groupSize, seed: r.seed, blockAp: r.blockAp };
}

/** An E2E-QP setting as `eqat quantize` names it: recipe key and flag (the seed is shared by both phases). */
function quantizeSettingName(key: string): string {
  if (key === 'seed') return 'seed (--seed)';
  const k = kebab(key);
  return `e2e_qp.${k.replace(/-/g, '_')} (--e2e-qp-${k})`;
}
