// `eqat quantize`: the whole EfficientQAT method behind one command — Block-AP, then E2E-QP
// on the Block-AP checkpoint — from flags and/or a recipe file (JSON or YAML, validated, with
// the paper's presets per bit width). The recipe is fully checked against the model before
// any work. Block-AP's checkpoint is kept at `<out>.block-ap`; the final one is `<out>`.
// Rerunning an interrupted command resumes: a finished Block-AP phase is reused, an
// interrupted one continues after its last finished block, and an interrupted E2E-QP phase
// continues from its last saved step (`<out>.partial/`); `restart` discards interrupted state.
import { existsSync, readFileSync, renameSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadConfig } from '../io/hf-config.js';
import { writeJsonAtomic } from '../io/quant-checkpoint.js';
import { mergeRecipe, recipeToJson, validateRecipe, validateRecipeForModel, type QuantizeRecipe, type RecipeOverrides } from './recipe.js';
import { runBlockAp, type BlockApPhases } from './block-ap.js';
import { kebab, runE2eQp } from './e2e-qp.js';
import { eqatVersion } from '../engine/version.js';

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
  seconds: number;
}

/** Merges and validates a recipe (file values, then flag overrides) against the model. */
export function resolveRecipe(fromFile: RecipeOverrides, fromFlags: RecipeOverrides, where: string): QuantizeRecipe {
  const r = mergeRecipe(fromFile, fromFlags, where);
  validateRecipe(r, where);
  validateRecipeForModel(r, loadConfig(r.model), where);
  return r;
}

export interface QuantizeOptions {
  quiet?: boolean;
  /** RAM budget of Block-AP's activation caches, bytes. */
  maxRamBytes?: number;
  /** E2E-QP: save its training state every this many steps (runE2eQp's saveEvery). */
  saveEvery?: number;
  /** Discard the state of interrupted phases (`<out>.block-ap.partial/`, `<out>.partial/`) and run them from the start. */
  restart?: boolean;
  /** Where both phases compute (default cpu), and their GEMM precision on CUDA (default bf16). */
  device?: 'cpu' | 'cuda';
  precision?: 'f32' | 'bf16';
}

export async function runQuantize(
  r: QuantizeRecipe,
  { quiet = false, maxRamBytes, saveEvery, restart = false, device, precision }: QuantizeOptions = {},
): Promise<QuantizeResult> {
  const t0 = performance.now();
  const out = resolve(r.out);
  if (existsSync(out)) throw new Error(`out ${r.out}: already exists; choose another directory or remove it`);
  const bapOut = out + '.block-ap';
  if (restart) rmSync(bapOut + '.partial', { recursive: true, force: true }); // E2E-QP's own state goes in runE2eQp
  const b = r.blockAp;
  let blockApSeconds = 0;
  let blockApPhases: BlockApPhases | null = null;
  const bapRecipeFile = join(bapOut, 'eqat-recipe.json');
  const sameBlockAp =
    existsSync(bapRecipeFile) &&
    JSON.stringify((JSON.parse(readFileSync(bapRecipeFile, 'utf8')) as { quantize?: unknown }).quantize) ===
      JSON.stringify(blockApPart(r));
  if (existsSync(bapOut) && !sameBlockAp) {
    throw new Error(`${bapOut}: exists from a different recipe; remove it or choose another --out`);
  }
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
      maxRamBytes,
      device,
      precision,
    }));
    // mark the Block-AP checkpoint with the part of the recipe that produced it (for reuse on rerun)
    const rec = JSON.parse(readFileSync(bapRecipeFile, 'utf8')) as Record<string, unknown>;
    writeJsonAtomic(bapRecipeFile, { ...rec, quantize: blockApPart(r) });
    blockApSeconds = (performance.now() - t) / 1000;
  }
  let e2eQpSeconds = 0;
  let e2eQpResumedFrom = 0;
  let e2eQpTrainSeconds = 0;
  const e = r.e2eQp;
  const record = { quantize_recipe: recipeToJson(r), versions: eqatVersion() };
  if (e.epochs > 0) {
    const t = performance.now();
    ({ resumedFrom: e2eQpResumedFrom, seconds: e2eQpTrainSeconds } = await runE2eQp({ ...e, model: bapOut, data: e.data ?? r.calib, out, seed: r.seed, quiet, record, saveEvery, restart, settingName: quantizeSettingName, device, precision }));
    e2eQpSeconds = (performance.now() - t) / 1000;
  } else {
    renameSync(bapOut, out);
    const rec = JSON.parse(readFileSync(join(out, 'eqat-recipe.json'), 'utf8')) as Record<string, unknown>;
    writeJsonAtomic(join(out, 'eqat-recipe.json'), { ...rec, ...record });
  }
  writeJsonAtomic(join(out, 'recipe.json'), recipeToJson(r));
  return { out, blockApOut: bapOut, blockApSeconds, blockApPhases, e2eQpSeconds, e2eQpTrainSeconds, e2eQpResumedFrom, seconds: (performance.now() - t0) / 1000 };
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
