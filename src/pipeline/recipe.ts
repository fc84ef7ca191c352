// The recipe of `eqat quantize`: every setting of both EfficientQAT phases (Block-AP, then
// E2E-QP) in one typed object, with the paper's presets per bit width, read from a JSON or YAML
// file, merged with command-line flags, validated, and written back into the output directory
// so that a run can be repeated exactly. Its schema is the one home of every training setting:
// key, type, range, preset, help text, and which of block-ap, e2e-qp and quantize take it as a
// flag; those commands' setting flags (and their --help lines) are generated from it, and one
// validator (valueProblem) checks flags, files and the options of runBlockAp and runE2eQp
// alike (validateCommandSettings); the rules between settings (train size vs batch size ...)
// live here too (settingRuleProblem).
//
// File format (JSON for .json, YAML for .yaml/.yml; keys in snake_case, every key optional):
//   model, calib, out, wbits, group_size, seed,
//   block_ap: { train_size, val_size, seqlen, batch_size, epochs, quant_lr, weight_lr, min_lr_factor, weight_decay }
//   e2e_qp:   { data, data_format, train_size, seqlen, batch_size, micro_batch_size, epochs, lr,
//               warmup_ratio, max_grad_norm, weight_decay }
//   eval:     { tasks, task_data, limit, ppl, ppl_seqlen, batch, baseline }   (run on the output, and
//             with baseline on the full-precision model too; eqat-eval.json)
// Paths are kept as written (relative paths are relative to the working directory, as on the
// command line). Unknown keys, wrong types and out-of-range values are errors that name the
// file and the full key path. Keys the file leaves out take the preset for the final wbits.
//
// The flow of the quantize command:
//   const file = recipePath ? loadRecipeFile(recipePath) : {};       // only what the file sets
//   const recipe = mergeRecipe(file, overridesFromFlags(flags), where); // flags win; presets fill the rest
//   validateRecipe(recipe, where); validateRecipeForModel(recipe, loadConfig(recipe.model), where);
//   writeFile(join(out, ...), JSON.stringify(recipeToJson(recipe), null, 2));
// Presets are applied only at the merge, never at load time: a file without weight_lr run with
// `--wbits 2` must get the 2-bit learning rate, not the one for the file's own wbits.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { extname, resolve } from 'node:path';
import { parse as parseYaml } from 'yaml';
import { blockApDefaults } from './block-ap.js';
import { e2eQpDefaults, type E2eQpSettings } from './e2e-qp.js';
import { checkPositions, type ModelConfig } from '../model/config.js';
import { modelLayoutProblems } from '../quant/formats.js';
import { SUPPORTED_CORPUS_EXTENSIONS } from '../data/documents.js';
import { isDatasetName } from '../data/named-datasets.js';
import { MC_TASK_NAMES, parseTaskList } from '../data/mc-tasks.js';
import { describeJson, isJsonObject } from '../io/errors.js';
import { formatFlagValue, UsageError, type FlagSpec, type FlagSpecs, type ParsedFlags } from '../cli/args.js';

export type { E2eQpSettings };

export interface BlockApSettings {
  /** Training windows of `seqlen` tokens drawn from the calibration corpus. */
  trainSize: number;
  /** Validation windows (disjoint from training); 0 = none. */
  valSize: number;
  seqlen: number;
  /** Windows per optimizer step. */
  batchSize: number;
  /** Epochs per block; 0 = round-to-nearest with the min-max init. */
  epochs: number;
  /** AdamW learning rate of step sizes and zero points. */
  quantLr: number;
  /** AdamW learning rate of weights, norms and biases. */
  weightLr: number;
  /** The cosine schedule ends at lr / minLrFactor. */
  minLrFactor: number;
  weightDecay: number;
}

/**
 * The e2e_qp section: the E2E-QP settings (one type, defined with their presets in
 * src/pipeline/e2e-qp.ts) plus the training data, which here may be left to the calibration
 * corpus. The seed is the recipe's top-level seed.
 */
export interface E2eQpSection extends E2eQpSettings {
  /** Training data; null = the calibration corpus (`calib`). */
  data: string | null;
}

/**
 * The eval section: what `eqat quantize` measures on its output once it is written (the paper's
 * row: perplexity and zero-shot accuracy), into eqat-eval.json. Nothing by default; when
 * anything is measured, the full-precision model is measured the same way too (baseline), as
 * the paper's tables always give the full-precision row to read the quantized one against.
 */
export interface EvalSection {
  /** Zero-shot tasks, comma-separated (src/data/mc-tasks.ts); null = none. */
  tasks: string | null;
  /** Directory of the tasks' data (eval --task-data); null = the hub datasets. */
  taskData: string | null;
  /** The first this many docs of each task; 0 = all. */
  limit: number;
  /** Perplexity data, comma-separated dataset names (wikitext2, c4) or files; null = none. */
  ppl: string | null;
  /** Window length of the perplexity. */
  pplSeqlen: number;
  /** Windows or sequences per forward step. */
  batch: number;
  /** Also evaluate the full-precision `model` on the same data and tasks (eqat-eval.json's `baseline`). */
  baseline: boolean;
}

export interface QuantizeRecipe {
  /** Full-precision Hugging Face model directory. */
  model: string;
  /** Calibration corpus of Block-AP (.txt, .jsonl with `text`, .parquet with `text`). */
  calib: string;
  /** Output directory. */
  out: string;
  wbits: number;
  groupSize: number;
  seed: number;
  blockAp: BlockApSettings;
  e2eQp: E2eQpSection;
  eval: EvalSection;
}

/** What a file or the command line sets: any subset of the recipe, camelCase, nothing filled in. */
export interface RecipeOverrides {
  model?: string;
  calib?: string;
  out?: string;
  wbits?: number;
  groupSize?: number;
  seed?: number;
  blockAp?: Partial<BlockApSettings>;
  e2eQp?: Partial<E2eQpSection>;
  eval?: Partial<EvalSection>;
}

/** A problem with a recipe; the message starts with where the recipe came from and the key path. */
/** A setting of a recipe (from flags or a recipe file) that is wrong: a usage error (exit 2). */
export class RecipeError extends UsageError {
  /** The file (or e.g. "command line") the recipe came from. */
  readonly where: string;
  /** Full snake_case key path, e.g. "block_ap.quant_lr"; '' for the document as a whole. */
  readonly key: string;
  constructor(where: string, key: string, problem: string) {
    super(`${where}: ${key ? key + ': ' : ''}${problem}`);
    this.name = 'RecipeError';
    this.where = where;
    this.key = key;
  }
}

export const SUPPORTED_BITS = [2, 3, 4, 8] as const;
export const DATA_FORMATS = ['auto', 'text', 'instruct'] as const;
/** Extensions of instruction data files (src/data/instruct.ts). */
export const INSTRUCT_EXTENSIONS = ['.jsonl', '.json'] as const;

/**
 * The paper's recipe for `wbits` (EfficientQAT): Block-AP as blockApDefaults (4096 x 2048-token
 * windows, val 64, batch 2, 2 epochs, s/z lr 1e-4, weight lr 2e-5 at 2 bits else 1e-5, cosine to
 * lr/20, no weight decay); E2E-QP as e2eQpDefaults (4096 samples x 4096 tokens, global batch 32
 * in micro batches of 1, 1 epoch, lr 2e-5 at 2 bits else 1e-5, 3% warm-up, clip 0.3, no weight
 * decay) on the calibration data. Group size 64 at 2 bits, 128 otherwise.
 */
export function defaultRecipe(wbits: number): Omit<QuantizeRecipe, 'model' | 'calib' | 'out'> {
  const b = blockApDefaults(wbits);
  const { seed: _seed, ...e2eQp } = e2eQpDefaults(wbits); // the seed is shared, at the top level
  return {
    wbits,
    groupSize: wbits === 2 ? 64 : 128,
    seed: b.seed,
    blockAp: {
      trainSize: b.trainSize,
      valSize: b.valSize,
      seqlen: b.seqlen,
      batchSize: b.batchSize,
      epochs: b.epochs,
      quantLr: b.quantLr,
      weightLr: b.weightLr,
      minLrFactor: b.minLrFactor,
      weightDecay: b.weightDecay,
    },
    e2eQp: { data: null, ...e2eQp },
    eval: { tasks: null, taskData: null, limit: 0, ppl: null, pplSeqlen: 2048, batch: 4, baseline: true },
  };
}

// ---------------------------------------------------------------------------------------------
// The schema: one table of every setting drives file parsing, range checks (valueProblem),
// recipeToJson, and the flags of block-ap, e2e-qp and quantize with their --help text.

/** The values a setting takes; valueProblem checks them, for recipe files and flags alike. */
export type ValueKind =
  | { type: 'string' } // non-empty
  | { type: 'nullable-string' } // non-empty or null
  | { type: 'choice'; values: readonly string[] }
  | { type: 'bool' } // true or false; on quantize a flag and its --no- negation
  | { type: 'bits' }
  | { type: 'int'; min?: number; max?: number }
  | { type: 'number'; min: number; max?: number; maxExclusive?: boolean };

/** The commands whose flags are generated from the schema. */
export type SettingCommand = 'block-ap' | 'e2e-qp' | 'quantize';

/** How block-ap or e2e-qp takes a setting, where that differs from the recipe. */
interface CommandUse {
  /** The flag must be given. */
  required?: true;
  /** A fixed default instead of the preset of the bit width. */
  default?: number;
  /** Values other than the recipe's. */
  kind?: ValueKind;
  /** Help text instead of the setting's own. */
  help?: string;
}

interface Field {
  /** snake_case key in the file. */
  key: string;
  /** camelCase property in the recipe object. */
  prop: string;
  kind: ValueKind;
  /** What the setting is, for --help (the default or preset is added to it). */
  help: string;
  /** The preset in words where it is no value (e2e_qp.data: null is the calibration data). */
  presetText?: string;
  /**
   * block-ap and e2e-qp take the settings listed here, as flags named after the key
   * (--train-size); quantize takes every setting, as a flag named after the path
   * (--block-ap-train-size).
   */
  commands: Partial<Record<Exclude<SettingCommand, 'quantize'>, CommandUse>>;
}

type Section = 'top' | 'block_ap' | 'e2e_qp' | 'eval';

const SECTION_PROP = { block_ap: 'blockAp', e2e_qp: 'e2eQp', eval: 'eval' } as const;
/** The phase a section's settings belong to, in front of their help on quantize. */
const SECTION_LABEL = { block_ap: 'Block-AP', e2e_qp: 'E2E-QP', eval: 'evaluation of the output:' } as const;

/** Top-level keys without a preset: a recipe must set them (mergeRecipe). */
const REQUIRED_KEYS = ['model', 'calib', 'out', 'wbits'] as const;

const f = (key: string, kind: ValueKind, help: string, more: Partial<Pick<Field, 'commands' | 'presetText'>> = {}): Field => ({
  key,
  prop: key.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase()),
  kind,
  help,
  commands: more.commands ?? {},
  ...(more.presetText !== undefined ? { presetText: more.presetText } : {}),
});

const REQUIRED: CommandUse = { required: true };
const CALIB_HELP = 'calibration text (.txt, .jsonl with `text`, .parquet with `text`), or a dataset name: wikitext2, c4, redpajama';
/** block-ap and e2e-qp take any integer seed (the generator uses it modulo 2^32). */
const ANY_SEED: CommandUse = { kind: { type: 'int' } };

const SCHEMA: Record<Section, Field[]> = {
  top: [
    f('model', { type: 'string' }, 'full-precision Hugging Face model directory', { commands: { 'block-ap': REQUIRED } }),
    f('calib', { type: 'string' }, CALIB_HELP, { commands: { 'block-ap': { help: `${CALIB_HELP}; required unless --epochs 0` } } }),
    f('out', { type: 'string' }, 'output directory (GPTQ v2 checkpoint); must not exist', { commands: { 'block-ap': REQUIRED, 'e2e-qp': REQUIRED } }),
    f('wbits', { type: 'bits' }, 'weight bits: 2, 3, 4 or 8', { commands: { 'block-ap': REQUIRED } }),
    f('group_size', { type: 'int', min: 1 }, 'quantization group size along the input dimension', { commands: { 'block-ap': { default: 128 } } }),
    f('seed', { type: 'int', min: 0, max: 0xffffffff }, 'seed of data sampling and shuffling', { commands: { 'block-ap': ANY_SEED, 'e2e-qp': ANY_SEED } }),
  ],
  // block-ap takes every Block-AP setting, e2e-qp every E2E-QP one
  block_ap: [
    f('train_size', { type: 'int', min: 1 }, 'training windows'),
    f('val_size', { type: 'int', min: 0 }, 'validation windows, disjoint from training'),
    f('seqlen', { type: 'int', min: 2 }, 'tokens per window'),
    f('batch_size', { type: 'int', min: 1 }, 'windows per step'),
    f('epochs', { type: 'int', min: 0 }, 'epochs per block; 0 = round-to-nearest (RTN)'),
    f('quant_lr', { type: 'number', min: 0 }, 'learning rate of step sizes and zero points'),
    f('weight_lr', { type: 'number', min: 0 }, 'learning rate of weights and norms'),
    f('min_lr_factor', { type: 'number', min: 1 }, 'cosine schedule ends at lr / this'),
    f('weight_decay', { type: 'number', min: 0 }, 'AdamW weight decay'),
  ].map((x) => ({ ...x, commands: { 'block-ap': {}, ...x.commands } })),
  e2e_qp: [
    f('data', { type: 'nullable-string' }, 'training data: text (.txt, .jsonl/.parquet with `text`; or a dataset name: wikitext2, c4, redpajama) or instructions (.jsonl/.json with instruction/input/output or messages)', {
      presetText: 'the calibration data',
      commands: { 'e2e-qp': { required: true, kind: { type: 'string' } } }, // null (the calibration data) is for recipes
    }),
    f('data_format', { type: 'choice', values: DATA_FORMATS }, 'format of the training data'),
    f('train_size', { type: 'int', min: 1 }, 'training samples'),
    f('seqlen', { type: 'int', min: 2 }, 'tokens per sample'),
    f('batch_size', { type: 'int', min: 1 }, 'global batch, samples per optimizer step'),
    f('micro_batch_size', { type: 'int', min: 1 }, 'samples per forward/backward pass (gradient accumulation); divides the batch size'),
    // a recipe may skip E2E-QP; the e2e-qp command always trains
    f('epochs', { type: 'int', min: 0 }, 'epochs; 0 skips E2E-QP', { commands: { 'e2e-qp': { kind: { type: 'int', min: 1 }, help: 'epochs' } } }),
    f('lr', { type: 'number', min: 0 }, 'learning rate of the step sizes'),
    f('warmup_ratio', { type: 'number', min: 0, max: 1, maxExclusive: true }, 'fraction of the steps in linear warm-up'),
    f('max_grad_norm', { type: 'number', min: 0 }, 'gradient-norm clip; 0 = none'),
    f('weight_decay', { type: 'number', min: 0 }, 'AdamW weight decay'),
  ].map((x) => ({ ...x, commands: { 'e2e-qp': {}, ...x.commands } })),
  // quantize only (eval takes the same settings as its own flags)
  eval: [
    f('tasks', { type: 'nullable-string' }, `zero-shot tasks, comma-separated (${MC_TASK_NAMES.join(', ')})`, { presetText: 'none' }),
    f('task_data', { type: 'nullable-string' }, "directory of the tasks' data (as eval --task-data)", { presetText: 'the hub datasets' }),
    f('limit', { type: 'int', min: 0 }, 'the first N docs of each task; 0 = all'),
    f('ppl', { type: 'nullable-string' }, 'perplexity data, comma-separated: dataset names (wikitext2, c4) or files', { presetText: 'none' }),
    f('ppl_seqlen', { type: 'int', min: 2 }, 'perplexity window length in tokens'),
    f('batch', { type: 'int', min: 1 }, 'windows or sequences per forward step'),
    f('baseline', { type: 'bool' }, 'also evaluate the full-precision model on the same data and tasks (the report shows both)', { presetText: 'on' }),
  ],
};

const SECTIONS = ['block_ap', 'e2e_qp', 'eval'] as const;

function pathOf(section: Section, key: string): string {
  return section === 'top' ? key : `${section}.${key}`;
}

function expected(kind: ValueKind): string {
  switch (kind.type) {
    case 'string':
      return 'a string';
    case 'nullable-string':
      return 'a string or null';
    case 'choice':
      return `one of ${kind.values.map((v) => `'${v}'`).join(', ')}`;
    case 'bool':
      return 'true or false';
    case 'bits':
    case 'int':
      return 'an integer';
    case 'number':
      return 'a number';
  }
}

/** The problem with a value of a setting (wrong type, out of range), or null when it is fine. */
export function valueProblem(v: unknown, kind: ValueKind): string | null {
  const got = describeJson(v);
  switch (kind.type) {
    case 'string':
      if (typeof v !== 'string') return `expected ${expected(kind)}, got ${got}`;
      return v.trim() === '' ? 'must not be empty' : null;
    case 'nullable-string':
      if (v === null) return null;
      if (typeof v !== 'string') return `expected ${expected(kind)}, got ${got}`;
      return v.trim() === '' ? 'must not be empty (use null for the default)' : null;
    case 'choice':
      if (typeof v !== 'string' || !kind.values.includes(v)) return `expected ${expected(kind)}, got ${got}`;
      return null;
    case 'bool':
      return typeof v === 'boolean' ? null : `expected ${expected(kind)}, got ${got}`;
    case 'bits':
      if (typeof v !== 'number' || !Number.isInteger(v)) return `expected ${expected(kind)}, got ${got}`;
      return (SUPPORTED_BITS as readonly number[]).includes(v) ? null : `must be 2, 3, 4 or 8, got ${v}`;
    case 'int':
      if (typeof v !== 'number' || !Number.isSafeInteger(v)) return `expected ${expected(kind)}, got ${got}`;
      if (kind.min !== undefined && v < kind.min) return `must be >= ${kind.min}, got ${v}`;
      if (kind.max !== undefined && v > kind.max) return `must be <= ${kind.max}, got ${v}`;
      return null;
    case 'number':
      if (typeof v !== 'number' || !Number.isFinite(v)) return `expected ${expected(kind)}, got ${got}`;
      if (v < kind.min) return `must be >= ${kind.min}, got ${v}`;
      if (kind.max !== undefined && (kind.maxExclusive ? v >= kind.max : v > kind.max)) {
        return `must be ${kind.maxExclusive ? '<' : '<='} ${kind.max}, got ${v}`;
      }
      return null;
  }
}

// ---------------------------------------------------------------------------------------------
// "did you mean" for unknown keys

function levenshtein(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/** groupSize, group-size, Group_Size → group_size. */
function normalizeKey(k: string): string {
  return k
    .replace(/([a-z0-9])([A-Z])/g, '$1_$2')
    .replace(/[-\s.]+/g, '_')
    .toLowerCase();
}

/**
 * Candidate keys for an unknown `key` in `section`: keys of the same section that are close in
 * spelling or share all words with it (lr → quant_lr, weight_lr), at most two, closest first;
 * failing that, the same key in another section (train_size at the top → block_ap.train_size).
 */
function suggestions(key: string, section: Section): string[] {
  const norm = normalizeKey(key);
  const words = norm.split('_').filter(Boolean);
  const own = SCHEMA[section].map((x) => x.key);
  if (own.includes(norm)) return [norm];
  const scored: [string, number][] = [];
  for (const c of own) {
    const cw = c.split('_');
    const d = levenshtein(norm, c);
    const close = d <= Math.max(1, Math.floor(Math.max(norm.length, c.length) / 4));
    const sharesWords = words.every((w) => cw.includes(w)) || cw.every((w) => words.includes(w));
    if (close || sharesWords) scored.push([c, d]);
  }
  if (scored.length > 0) {
    return scored
      .sort((a, b) => a[1] - b[1])
      .slice(0, 2)
      .map(([c]) => c);
  }
  const elsewhere: string[] = [];
  for (const s of ['top', ...SECTIONS] as Section[]) {
    if (s === section) continue;
    if (SCHEMA[s].some((x) => x.key === norm)) elsewhere.push(pathOf(s, norm));
    if (s !== 'top' && (norm === s || levenshtein(norm, s) <= 2)) elsewhere.push(s);
  }
  return elsewhere;
}

function unknownKeyProblem(key: string, section: Section): string {
  const s = suggestions(key, section);
  if (s.length === 0) return 'unknown key';
  const list = s.length === 1 ? s[0]! : `${s.slice(0, -1).join(', ')} or ${s[s.length - 1]}`;
  return `unknown key (did you mean ${list}?)`;
}

// ---------------------------------------------------------------------------------------------
// Reading a recipe file

/**
 * Parses a JSON/YAML document (already decoded) into overrides: unknown keys, wrong types and
 * out-of-range values throw a RecipeError naming `where` and the key path. Nothing is filled in.
 */
export function parseRecipeObject(doc: unknown, where: string): RecipeOverrides {
  if (!isJsonObject(doc)) {
    throw new RecipeError(where, '', `a recipe must be a mapping of keys to values, got ${describeJson(doc)}`);
  }
  const out: Record<string, unknown> = {};
  const readSection = (obj: Record<string, unknown>, section: Section, target: Record<string, unknown>): void => {
    const fields = SCHEMA[section];
    for (const key of Object.keys(obj)) {
      const value = obj[key];
      if (section === 'top' && (SECTIONS as readonly string[]).includes(key)) {
        const s = key as (typeof SECTIONS)[number];
        if (!isJsonObject(value)) throw new RecipeError(where, key, `expected a mapping of settings, got ${describeJson(value)}`);
        const sub: Record<string, unknown> = {};
        readSection(value, s, sub);
        target[SECTION_PROP[s]] = sub;
        continue;
      }
      const field = fields.find((x) => x.key === key);
      if (!field) throw new RecipeError(where, pathOf(section, key), unknownKeyProblem(key, section));
      const problem = valueProblem(value, field.kind);
      if (problem) throw new RecipeError(where, pathOf(section, key), problem);
      target[field.prop] = value;
    }
  };
  readSection(doc, 'top', out);
  return out as RecipeOverrides;
}

/** Adds "line L, column C" to a JSON.parse message that gives only a character position. */
function withLineColumn(message: string, text: string): string {
  const m = /at position (\d+)/.exec(message);
  if (!m || /line \d+/.test(message)) return message;
  const before = text.slice(0, Number(m[1]));
  const line = before.split('\n').length;
  const column = before.length - before.lastIndexOf('\n');
  return `${message} (line ${line}, column ${column})`;
}

/**
 * Reads a recipe file: JSON for .json, YAML (1.2) for .yaml/.yml. Returns only what the file
 * sets (merge with mergeRecipe to fill the presets). Errors name the file, and for bad keys the
 * key path; parse errors give the line.
 */
export function loadRecipeFile(path: string): RecipeOverrides {
  const ext = extname(path).toLowerCase();
  if (!['.json', '.yaml', '.yml'].includes(ext)) {
    throw new RecipeError(path, '', `unsupported recipe format (${ext ? `extension "${extname(path)}"` : 'no extension'}); use .json, .yaml or .yml`);
  }
  if (!existsSync(path)) throw new RecipeError(path, '', 'recipe file not found');
  if (!statSync(path).isFile()) throw new RecipeError(path, '', 'not a regular file');
  let text = readFileSync(path, 'utf8');
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  let doc: unknown;
  if (ext === '.json') {
    try {
      doc = JSON.parse(text);
    } catch (e) {
      throw new RecipeError(path, '', `not valid JSON: ${withLineColumn((e as Error).message, text)}`);
    }
  } else {
    try {
      // YAML 1.2 core schema: 1e-5 is a number, yes/no are strings; duplicate keys are errors.
      doc = parseYaml(text, { prettyErrors: true, uniqueKeys: true });
    } catch (e) {
      throw new RecipeError(path, '', `not valid YAML: ${(e as Error).message.replace(/\s+$/, '')}`);
    }
    if (doc === null || doc === undefined) throw new RecipeError(path, '', 'the recipe file is empty');
  }
  return parseRecipeObject(doc, path);
}

// ---------------------------------------------------------------------------------------------
// Merging and validation

function definedOnly<T extends object>(o: T | undefined): Partial<T> {
  const r: Partial<T> = {};
  if (!o) return r;
  for (const [k, v] of Object.entries(o)) if (v !== undefined) (r as Record<string, unknown>)[k] = v;
  return r;
}

/**
 * The full recipe: `overrides` over `base` (key by key, undefined values ignored), then the
 * presets of the resulting wbits for every setting neither sets. model, calib, out and wbits
 * have no preset: a RecipeError naming `where` and the key says when one is missing. Values are
 * not range-checked here; call validateRecipe.
 */
export function mergeRecipe(base: RecipeOverrides, overrides: RecipeOverrides = {}, where = 'recipe'): QuantizeRecipe {
  const top = { ...definedOnly(base), ...definedOnly(overrides) };
  for (const key of REQUIRED_KEYS) {
    if (top[key] === undefined) {
      throw new RecipeError(where, key, `missing (set ${key} in the recipe file or pass --${key})`);
    }
  }
  const d = defaultRecipe(top.wbits!);
  return {
    model: top.model!,
    calib: top.calib!,
    out: top.out!,
    wbits: top.wbits!,
    groupSize: top.groupSize ?? d.groupSize,
    seed: top.seed ?? d.seed,
    blockAp: { ...d.blockAp, ...definedOnly(base.blockAp), ...definedOnly(overrides.blockAp) },
    e2eQp: { ...d.e2eQp, ...definedOnly(base.e2eQp), ...definedOnly(overrides.e2eQp) },
    eval: { ...d.eval, ...definedOnly(base.eval), ...definedOnly(overrides.eval) },
  };
}

function extOk(path: string, exts: readonly string[]): boolean {
  return exts.includes(extname(path).toLowerCase());
}

/**
 * The rules between the settings of a phase, for recipes and commands alike: Block-AP with
 * epochs > 0 needs the calibration corpus and train_size >= batch_size; E2E-QP needs batch_size
 * a multiple of micro_batch_size and, with epochs > 0, train_size >= batch_size. `settings`
 * holds the phase's settings (and calib) by their camelCase names, each already in range;
 * `name` says how a message names a setting (its recipe path or a command's flag). Returns the
 * name of the setting at fault and the problem, or null.
 */
function settingRuleProblem(
  section: (typeof SECTIONS)[number],
  settings: object,
  name: (section: Section, key: string) => string,
): [string, string] | null {
  const s = settings as { calib?: string | null; epochs: number; trainSize: number; batchSize: number; microBatchSize?: number };
  const own = (key: string): string => name(section, key);
  if (section === 'block_ap' && s.epochs > 0 && s.calib == null) return [name('top', 'calib'), `is required when ${own('epochs')} > 0`];
  if (section === 'e2e_qp' && s.batchSize % s.microBatchSize! !== 0) {
    return [own('batch_size'), `${s.batchSize} is not a multiple of ${own('micro_batch_size')} = ${s.microBatchSize}`];
  }
  if (s.epochs > 0 && s.trainSize < s.batchSize) return [own('train_size'), `${s.trainSize} is less than ${own('batch_size')} = ${s.batchSize}`];
  return null;
}

/**
 * Everything that can be checked without opening the model: each value's type and range, and
 * the relations between them (batch sizes, data formats, out ≠ model). Throws a RecipeError
 * naming `where` and the key.
 */
export function validateRecipe(r: QuantizeRecipe, where: string): void {
  const fail = (key: string, problem: string): never => {
    throw new RecipeError(where, key, problem);
  };
  const obj = r as unknown as Record<string, unknown>;
  for (const section of ['top', ...SECTIONS] as Section[]) {
    const holder = section === 'top' ? obj : (obj[SECTION_PROP[section]] as Record<string, unknown> | undefined);
    if (!isJsonObject(holder)) fail(section, `expected a mapping of settings, got ${describeJson(holder)}`);
    for (const field of SCHEMA[section]) {
      const v = holder![field.prop];
      const problem = v === undefined ? 'missing' : valueProblem(v, field.kind);
      if (problem) fail(pathOf(section, field.key), problem);
    }
  }

  if (r.eval.tasks !== null) {
    try {
      parseTaskList(r.eval.tasks, 'eval.tasks (--eval-tasks)');
    } catch (e) {
      throw new RecipeError(where, 'eval.tasks', (e as Error).message.replace(/^eval\.tasks \(--eval-tasks\): /, ''));
    }
  }
  if (r.eval.ppl !== null && r.eval.ppl.split(',').every((x) => x.trim() === '')) fail('eval.ppl', 'names no dataset or file');

  const corpusExts = SUPPORTED_CORPUS_EXTENSIONS as readonly string[];
  if (!isDatasetName(r.calib) && !extOk(r.calib, corpusExts)) {
    fail('calib', `${r.calib}: unsupported corpus format; supported: ${corpusExts.join(', ')}`);
  }
  if (resolve(r.out) === resolve(r.model)) fail('out', `must differ from model (${r.model})`);

  const rule = settingRuleProblem('block_ap', { calib: r.calib, ...r.blockAp }, pathOf) ?? settingRuleProblem('e2e_qp', r.e2eQp, pathOf);
  if (rule) fail(...rule);

  const e = r.e2eQp;
  const data = e.data ?? r.calib;
  const dataKey = e.data === null ? 'calib' : 'e2e_qp.data';
  if (isDatasetName(data)) {
    // a named dataset is text (src/data/named-datasets.ts)
    if (e.dataFormat === 'instruct') fail(dataKey, `${data} is a text dataset; e2e_qp.data_format 'instruct' needs a ${INSTRUCT_EXTENSIONS.join(' or ')} file`);
    return;
  }
  const instructExts = INSTRUCT_EXTENSIONS as readonly string[];
  if (e.dataFormat === 'instruct' && !extOk(data, instructExts)) {
    fail(dataKey, `${data}: e2e_qp.data_format 'instruct' needs a ${instructExts.join(' or ')} file`);
  }
  if (e.dataFormat === 'text' && !extOk(data, corpusExts)) {
    fail(dataKey, `${data}: unsupported text corpus format for e2e_qp.data_format 'text'; supported: ${corpusExts.join(', ')}`);
  }
  if (e.dataFormat === 'auto' && !extOk(data, [...corpusExts, ...instructExts])) {
    fail(dataKey, `${data}: unsupported data format; supported: ${[...new Set([...corpusExts, ...instructExts])].join(', ')}`);
  }
}

/**
 * Checks the recipe against the model's architecture: group_size divides the in_features of
 * every linear layer, and each layer can be stored in the GPTQ layout at wbits (the error names
 * group_size and the layers); each training phase's seqlen fits the model's positions.
 */
export function validateRecipeForModel(r: QuantizeRecipe, cfg: ModelConfig, where = 'recipe'): void {
  const G = r.groupSize;
  const { indivisible, gptq } = modelLayoutProblems(cfg, G, r.wbits);
  if (indivisible.length > 0) {
    const bad = new Map<string, string[]>(); // "hidden_size = 128" → layers
    for (const l of indivisible) {
      const k = `${l.field} = ${l.inFeatures}`;
      bad.set(k, [...(bad.get(k) ?? []), l.name]);
    }
    const parts = [...bad].map(([dim, layers]) => `${layers.join(', ')} (in_features ${dim})`);
    throw new RecipeError(where, 'group_size', `${G} does not divide the input size of ${parts.join('; ')} of ${r.model}`);
  }
  if (gptq) throw new RecipeError(where, 'group_size', `${r.model} cannot be stored as a GPTQ checkpoint: ${gptq}`);
  if (r.blockAp.epochs > 0) checkPositions(cfg, r.blockAp.seqlen, `${where}: block_ap.seqlen (--block-ap-seqlen) ${r.blockAp.seqlen}`, r.model);
  if (r.e2eQp.epochs > 0) checkPositions(cfg, r.e2eQp.seqlen, `${where}: e2e_qp.seqlen (--e2e-qp-seqlen) ${r.e2eQp.seqlen}`, r.model);
}

/**
 * The recipe as written into the output directory: snake_case, every key, in the file schema,
 * so that loadRecipeFile reads it back to the same recipe.
 */
export function recipeToJson(r: QuantizeRecipe): Record<string, unknown> {
  const obj = r as unknown as Record<string, unknown>;
  const out: Record<string, unknown> = {};
  for (const field of SCHEMA.top) out[field.key] = obj[field.prop];
  for (const s of SECTIONS) {
    const src = obj[SECTION_PROP[s]] as Record<string, unknown>;
    const sec: Record<string, unknown> = {};
    for (const field of SCHEMA[s]) sec[field.key] = src[field.prop];
    out[s] = sec;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Command-line flags, generated from the schema and checked by valueProblem. quantize takes every
// setting, named after its path (group_size → --group-size, block_ap.train_size →
// --block-ap-train-size, e2e_qp.lr → --e2e-qp-lr), with no defaults: unset flags leave the file's
// value or the preset in place; a true/false setting is a switch and its negation
// (--eval-baseline, --no-eval-baseline). block-ap and e2e-qp take the settings listed for them, named after
// the key (--train-size), with the preset as the default where it does not depend on the bit
// width; the command fills in the others (blockApDefaults / e2eQpDefaults of the bits).

/** Every setting in schema order, with its section. */
function allFields(): { section: Section; field: Field }[] {
  return (['top', ...SECTIONS] as Section[]).flatMap((section) => SCHEMA[section].map((field) => ({ section, field })));
}

/** The preset of a setting at `wbits` (defaultRecipe's value). */
function presetAt(section: Section, field: Field, wbits: number): unknown {
  const d = defaultRecipe(wbits) as unknown as Record<string, unknown>;
  const holder = section === 'top' ? d : (d[SECTION_PROP[section]] as Record<string, unknown>);
  return holder[field.prop];
}

/** The preset of a setting for --help ("4096", "2e-5 for 2-bit, 1e-5 otherwise"); null where there is none. */
function presetText(section: Section, field: Field): string | null {
  if (field.presetText !== undefined) return field.presetText;
  if (section === 'top' && (REQUIRED_KEYS as readonly string[]).includes(field.key)) return null;
  const [low, ...others] = SUPPORTED_BITS.map((b) => formatFlagValue(presetAt(section, field, b) as string | number));
  if (others.every((v) => v === low)) return low!;
  if (others.some((v) => v !== others[0])) throw new Error(`the presets of ${pathOf(section, field.key)} differ above 2 bits`);
  return `${low} for 2-bit, ${others[0]} otherwise`;
}

/** The flag of a setting on a command, without the dashes: group-size, block-ap-train-size on quantize, train-size on block-ap. */
function flagName(command: SettingCommand, section: Section, key: string): string {
  return (command === 'quantize' ? pathOf(section, key) : key).replace(/[._]/g, '-');
}

/** The values a command takes for a setting: its own (e2e-qp: epochs >= 1) or the recipe's. */
function kindOn(command: SettingCommand, field: Field): ValueKind {
  return (command === 'quantize' ? undefined : field.commands[command]?.kind) ?? field.kind;
}

/** The flag of a setting on a command; null when the command does not take it. */
function flagOf(command: SettingCommand, section: Section, field: Field): { name: string; spec: FlagSpec } | null {
  const use = command === 'quantize' ? {} : field.commands[command];
  if (!use) return null;
  const kind = kindOn(command, field);
  const name = flagName(command, section, field.key);
  const spec: FlagSpec = {
    type: kind.type === 'number' ? 'number' : kind.type === 'int' || kind.type === 'bits' ? 'int' : kind.type === 'bool' ? 'boolean' : 'string',
    help: use.help ?? field.help,
    check: (value) => valueProblem(value, kind),
  };
  if (kind.type === 'choice') spec.choices = kind.values;
  const preset = presetText(section, field);
  if (command === 'quantize') {
    if (section !== 'top') spec.help = `${SECTION_LABEL[section]} ${spec.help}`;
    if (preset !== null) spec.defaultNote = `preset: ${preset}`;
    return { name, spec };
  }
  if (use.required) spec.required = true;
  else if (use.default !== undefined) spec.default = use.default;
  else if (preset !== null) {
    const values = SUPPORTED_BITS.map((b) => presetAt(section, field, b));
    if (values.every((v) => v === values[0])) spec.default = values[0] as string | number;
    else spec.defaultNote = `default: ${preset}`;
  }
  return { name, spec };
}

/**
 * The negation of a true/false setting's flag (--no-eval-baseline): the flag alone sets it true,
 * the negation false, so that either value can win over a recipe file and the preset.
 */
function negationOf(section: Section, field: Field, flag: { name: string }): { name: string; spec: FlagSpec } {
  const label = section === 'top' ? '' : `${SECTION_LABEL[section]} `;
  return { name: `no-${flag.name}`, spec: { type: 'boolean', help: `${label}${pathOf(section, field.key)} off (the opposite of --${flag.name})` } };
}

/** The flags of the recipe settings a command takes, in schema order (a true/false setting's negation after it). */
export function recipeFlagSpecs(command: SettingCommand = 'quantize'): FlagSpecs {
  const specs: FlagSpecs = {};
  for (const { section, field } of allFields()) {
    const flag = flagOf(command, section, field);
    if (!flag) continue;
    specs[flag.name] = flag.spec;
    if (field.kind.type === 'bool') {
      const neg = negationOf(section, field, flag);
      specs[neg.name] = neg.spec;
    }
  }
  return specs;
}

/** The settings given by a command's parsed setting flags (flags without a value are left out). */
export function overridesFromFlags(flags: ParsedFlags, command: SettingCommand = 'quantize'): RecipeOverrides {
  const out: Record<string, unknown> = {};
  for (const { section, field } of allFields()) {
    const flag = flagOf(command, section, field);
    if (!flag) continue;
    const target = section === 'top' ? out : ((out[SECTION_PROP[section]] ??= {}) as Record<string, unknown>);
    const value = flags[flag.name];
    if (value !== undefined) target[field.prop] = value;
    if (field.kind.type === 'bool' && flags[negationOf(section, field, flag).name] === true) {
      if (value !== undefined) throw new UsageError(`--${flag.name} and --no-${flag.name}: give one or the other`);
      target[field.prop] = false;
    }
  }
  return out as RecipeOverrides;
}

/**
 * Checks the settings of runBlockAp or runE2eQp (their options: one object of the settings the
 * command takes as flags, by their camelCase names) as the flags are checked, before any work:
 * each value by valueProblem against the command's range of the setting, then the rules between
 * them (settingRuleProblem). A setting whose flag has neither a default nor a preset (block-ap's
 * --calib) may be null. Throws naming the flag: `--train-size: must be >= 1, got 0`.
 */
export function validateCommandSettings(command: Exclude<SettingCommand, 'quantize'>, settings: object): void {
  const values = settings as Record<string, unknown>;
  for (const { section, field } of allFields()) {
    const flag = flagOf(command, section, field);
    if (!flag) continue;
    const v = values[field.prop];
    const { required, default: byDefault, defaultNote } = flag.spec;
    if (v === null && !required && byDefault === undefined && defaultNote === undefined) continue;
    const problem = v === undefined ? 'missing' : valueProblem(v, kindOn(command, field));
    if (problem) throw new UsageError(`--${flag.name}: ${problem}`);
  }
  const section = command === 'block-ap' ? 'block_ap' : 'e2e_qp';
  const rule = settingRuleProblem(section, settings, (s, key) => `--${flagName(command, s, key)}`);
  if (rule) throw new UsageError(`${rule[0]}: ${rule[1]}`);
}

/** Where each setting is a flag: its recipe path and the commands that take it. */
export function recipeSettings(): { path: string; commands: SettingCommand[] }[] {
  return allFields().map(({ section, field }) => ({
    path: pathOf(section, field.key),
    commands: [...(Object.keys(field.commands) as SettingCommand[]), 'quantize'],
  }));
}
