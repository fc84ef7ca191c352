// The table of `eqat` subcommands: summary, flags (with defaults) and the function that runs.
// The flags of training settings on block-ap, e2e-qp and quantize come from the recipe schema
// (recipeFlagSpecs); the flags written here are the ones that are no recipe setting.
import { UsageError, type FlagSpecs, type ParsedFlags } from './args.js';
import { EVAL_DEFAULTS } from '../pipeline/eval.js';
import { formatZeroShot } from '../pipeline/zero-shot.js';
import { MC_TASK_NAMES, parseTaskList } from '../data/mc-tasks.js';
import { resolveModel } from '../io/hub.js';
import { GENERATE_DEFAULTS } from '../pipeline/generate.js';
import { native } from '../engine/native.js';
import { blockAp, e2eQp, evaluate, exportModel, generate, quantize } from '../index.js';
import { formatDemo, runDemo } from '../pipeline/demo.js';
import { REPORT_FILE, writeReport } from '../report/report.js';
import { checkInputPath } from '../io/errors.js';
import { join } from 'node:path';
import { E2E_QP_SAVE_EVERY, E2E_QP_SAVE_SECONDS } from '../pipeline/e2e-qp.js';
import { GGUF_EMBEDDING_CHOICES, GGUF_TYPE_CHOICES, type GgufExportOptions } from '../export/gguf.js';
import { overridesFromFlags, recipeFlagSpecs } from '../pipeline/recipe.js';
import { BF16_NEEDS_CUDA, DEVICE_FLAGS, deviceForCommand, setDeviceMemoryBudget, type DeviceFlag } from '../engine/cuda.js';

export interface Command {
  summary: string;
  flags: FlagSpecs;
  run(flags: ParsedFlags): Promise<void>;
}

const str = (f: ParsedFlags, k: string) => f[k] as string;
const int = (f: ParsedFlags, k: string) => f[k] as number;

const threadsFlag = { type: 'int', min: 1, help: 'CPU threads (default: all cores)' } as const;

// on every command: progress (bars, per-block lines, downloads) goes to stderr, results to stdout
const quietFlag = { type: 'boolean', default: false, help: 'no progress output on stderr' } as const;

// every command that writes refuses an existing output without it (src/io/output.ts)
const forceFlag = { type: 'boolean', default: false, help: 'replace an existing --out, once the new output is complete' } as const;

const saveEveryFlag = {
  type: 'int',
  default: E2E_QP_SAVE_EVERY,
  min: 0,
  help:
    `save the training state to OUT.partial/ every N optimizer steps (and after any step ending ${E2E_QP_SAVE_SECONDS / 60} min after the last save); ` +
    'rerunning an interrupted command resumes from it (same result byte for byte); 0 = never',
} as const;

// every compute command runs on CUDA; `--device cuda` without a usable GPU fails with the
// reason before anything is read or written, and `auto` then runs on the CPU
const deviceFlag = {
  type: 'string',
  default: 'cpu',
  choices: DEVICE_FLAGS,
  help: 'compute device; auto = CUDA when present',
} as const;

const precisionFlag = {
  type: 'string',
  choices: ['f32', 'bf16'],
  help: 'GEMM input precision on CUDA: bf16 (tensor cores, f32 sums; the default there) or f32; the CPU computes in f32',
} as const;

const maxGpuMemoryFlag = {
  type: 'number',
  min: 0,
  help: 'GiB of GPU memory the run may allocate (--device cuda); a run that needs more stops before it starts',
} as const;

/** Applies --max-gpu-memory (a cap on device allocations) when given. */
function applyGpuBudget(f: ParsedFlags): void {
  const gib = f['max-gpu-memory'] as number | undefined;
  if (gib !== undefined) setDeviceMemoryBudget(gib * 2 ** 30, `--max-gpu-memory ${gib}`);
}

/** The device of a command from --device (throws for an unusable choice). */
function applyDevice(command: string, f: ParsedFlags): 'cpu' | 'cuda' {
  return deviceForCommand(command, str(f, 'device') as DeviceFlag);
}

/** Peak resident memory of this process so far, MiB. */
function peakRssMiB(): number {
  return Math.round(process.resourceUsage().maxRSS / 1024);
}

/**
 * The local directory of --model (or another model flag): the path as given when it exists,
 * else the Hugging Face cache snapshot of a hub name `org/name[@revision]`, downloaded when
 * files are missing (src/io/hub.ts). Called once, early, before any expensive work.
 */
async function modelDir(f: ParsedFlags, key = 'model'): Promise<string> {
  return resolveModel(str(f, key), { flag: `--${key}`, quiet: f['quiet'] === true });
}

function applyThreads(f: ParsedFlags): void {
  if (f['threads'] !== undefined) native().setThreads(int(f, 'threads'));
}

export const COMMANDS: Record<string, Command> = {
  eval: {
    summary: 'perplexity of a model (full precision or eqat-quantized) on a text file, and/or zero-shot multiple-choice accuracy (lm-evaluation-harness tasks)',
    flags: {
      model: { type: 'string', required: true, help: 'model directory (Hugging Face checkpoint or eqat output), or a hub name org/name[@revision]' },
      data: { type: 'string', help: 'perplexity: text file (.txt; .jsonl/.parquet documents are joined by blank lines), or wikitext2 / c4 (the official protocols: README)' },
      tasks: { type: 'string', help: `zero-shot tasks, comma-separated: ${MC_TASK_NAMES.join(', ')} (docs/EVAL.md)` },
      'task-data': { type: 'string', help: "directory of the tasks' data in their hub schema: DIR/<task>.parquet or .jsonl, or DIR/<task>/<split>[-*].parquet (default: the hub datasets, through the Hugging Face cache)" },
      limit: { type: 'int', min: 1, help: 'zero-shot: evaluate only the first N docs of each task' },
      seqlen: { type: 'int', default: EVAL_DEFAULTS.seqlen, min: 2, help: 'perplexity: window length in tokens' },
      batch: { type: 'int', default: EVAL_DEFAULTS.batch, min: 1, help: 'windows (perplexity) or sequences (zero-shot) per forward step' },
      'max-windows': { type: 'int', min: 1, help: 'perplexity: evaluate only the first N windows' },
      json: { type: 'boolean', default: false, help: 'print a JSON object as the last line of stdout' },
      quiet: quietFlag,
      threads: threadsFlag,
      device: deviceFlag,
      precision: precisionFlag,
      'max-gpu-memory': maxGpuMemoryFlag,
    },
    async run(f) {
      const data = f['data'] as string | undefined;
      const taskList = f['tasks'] as string | undefined;
      if (data === undefined && taskList === undefined) throw new UsageError('eqat eval: pass --data FILE (perplexity) or --tasks LIST (zero-shot), or both');
      const tasks = taskList !== undefined ? parseTaskList(taskList, '--tasks') : null;
      if (!tasks) {
        for (const k of ['task-data', 'limit']) if (f[k] !== undefined) throw new UsageError(`eqat eval: --${k} goes with --tasks`);
      }
      const device = applyDevice('eval', f);
      applyGpuBudget(f);
      applyThreads(f);
      const precision = f['precision'] as 'f32' | 'bf16' | undefined;
      const { perplexity: ppl, zeroShot: zs } = await evaluate({
        model: str(f, 'model'),
        data,
        seqlen: int(f, 'seqlen'),
        batch: int(f, 'batch'),
        maxWindows: f['max-windows'] as number | undefined,
        tasks: tasks?.map((t) => t.name),
        taskData: f['task-data'] as string | undefined,
        limit: f['limit'] as number | undefined,
        device,
        precision,
        progress: !f['quiet'],
      });
      if (f['json']) {
        const out = { model: str(f, 'model'), ...(ppl ? { data, ...ppl } : {}), ...(zs ? { zeroShot: zs } : {}), peakRssMiB: peakRssMiB() };
        console.log(JSON.stringify(out));
      } else {
        if (ppl) console.log(`ppl ${ppl.ppl.toFixed(4)}  nll ${ppl.nll.toFixed(5)}  windows ${ppl.windows} x ${ppl.seqlen} tokens  ${ppl.seconds.toFixed(1)} s`);
        if (zs) console.log(formatZeroShot(zs));
      }
    },
  },
  generate: {
    summary: 'generate text from a prompt (greedy by default)',
    flags: {
      model: { type: 'string', required: true, help: 'model directory, or a hub name org/name[@revision]' },
      prompt: { type: 'string', required: true, help: 'prompt text' },
      'max-new-tokens': { type: 'int', default: GENERATE_DEFAULTS.maxNewTokens, min: 0, help: 'tokens to generate' },
      temperature: { type: 'number', default: GENERATE_DEFAULTS.temperature, min: 0, help: 'sampling temperature; 0 is greedy' },
      seed: { type: 'int', default: GENERATE_DEFAULTS.seed, help: 'sampling seed' },
      json: { type: 'boolean', default: false, help: 'print ids and text as JSON' },
      quiet: quietFlag,
      threads: threadsFlag,
      device: deviceFlag,
      precision: precisionFlag,
      'max-gpu-memory': maxGpuMemoryFlag,
    },
    async run(f) {
      const device = applyDevice('generate', f);
      const precision = f['precision'] as 'f32' | 'bf16' | undefined;
      if (precision === 'bf16' && device !== 'cuda') throw new UsageError(`--precision: ${BF16_NEEDS_CUDA}`);
      applyGpuBudget(f);
      applyThreads(f);
      const r = await generate({
        model: await modelDir(f),
        prompt: str(f, 'prompt'),
        maxNewTokens: int(f, 'max-new-tokens'),
        temperature: f['temperature'] as number,
        seed: int(f, 'seed'),
        device,
        precision,
      });
      if (f['json']) console.log(JSON.stringify({ prompt_ids: r.promptIds, output_ids: r.outputIds, text: r.text }));
      else console.log(str(f, 'prompt') + r.text);
    },
  },
  'block-ap': {
    summary: 'Block-AP: quantize a model block by block, training all block parameters (EfficientQAT phase 1)',
    flags: {
      ...recipeFlagSpecs('block-ap'),
      'max-ram': { type: 'number', min: 0, help: 'GiB of RAM for activation caches before they go to disk (default: half of RAM)' },
      restart: { type: 'boolean', default: false, help: 'discard an interrupted run in OUT.partial/ instead of resuming it' },
      force: forceFlag,
      quiet: quietFlag,
      json: { type: 'boolean', default: false, help: 'print a JSON summary as the last line of stdout' },
      threads: threadsFlag,
      device: deviceFlag,
      precision: precisionFlag,
      'max-gpu-memory': maxGpuMemoryFlag,
    },
    async run(f) {
      const device = applyDevice('block-ap', f);
      applyGpuBudget(f);
      applyThreads(f);
      const s = overridesFromFlags(f, 'block-ap');
      s.model = await modelDir(f);
      // the library's blockAp: flags without a default (--weight-lr) take the presets of the bit width
      const r = await blockAp({
        ...s.blockAp,
        model: s.model!,
        calib: s.calib ?? null,
        out: s.out!,
        wbits: s.wbits!,
        groupSize: s.groupSize!,
        seed: s.seed!,
        maxRamBytes: f['max-ram'] !== undefined ? (f['max-ram'] as number) * 2 ** 30 : undefined,
        restart: f['restart'] as boolean,
        force: f['force'] as boolean,
        progress: !f['quiet'],
        device,
        precision: f['precision'] as 'f32' | 'bf16' | undefined,
      });
      if (f['json']) {
        console.log(JSON.stringify({ ...r, peakRssMiB: peakRssMiB() }));
      } else {
        console.log(
          `wrote ${r.out} (${r.blocks.length} blocks, ${r.seconds.toFixed(1)} s${r.resumedFrom ? `, resumed after block ${r.resumedFrom}` : ''})`,
        );
      }
    },
  },
  demo: {
    summary: 'quantize the bundled llama-tiny (RTN, Block-AP, Block-AP + E2E-QP) and compare perplexities',
    flags: {
      wbits: { type: 'int', default: 2, min: 2, help: 'weight bits' },
      'group-size': { type: 'int', default: 32, min: 1, help: 'group size' },
      'train-size': { type: 'int', default: 256, min: 32, help: 'training windows (Block-AP and E2E-QP)' },
      seqlen: { type: 'int', default: 256, min: 2, help: 'tokens per window (training and evaluation)' },
      epochs: { type: 'int', default: 2, min: 1, help: 'Block-AP epochs' },
      keep: { type: 'string', help: 'keep the quantized checkpoints in this directory' },
      quiet: quietFlag,
      json: { type: 'boolean', default: false, help: 'print the perplexities as JSON instead of a table' },
      threads: threadsFlag,
      device: deviceFlag,
    },
    async run(f) {
      const device = applyDevice('demo', f);
      applyThreads(f);
      const r = await runDemo({
        wbits: int(f, 'wbits'),
        groupSize: int(f, 'group-size'),
        trainSize: int(f, 'train-size'),
        seqlen: int(f, 'seqlen'),
        epochs: int(f, 'epochs'),
        keep: (f['keep'] as string | undefined) ?? null,
        quiet: f['quiet'] as boolean,
        device,
      });
      console.log(f['json'] ? JSON.stringify(r) : formatDemo(r));
    },
  },
  'e2e-qp': {
    summary: 'E2E-QP: train only the step sizes of a quantized model end to end (EfficientQAT phase 2)',
    flags: {
      model: { type: 'string', required: true, help: 'quantized model directory (output of block-ap), or a hub name org/name[@revision]' },
      ...recipeFlagSpecs('e2e-qp'),
      'save-every': saveEveryFlag,
      restart: { type: 'boolean', default: false, help: 'discard an interrupted run in OUT.partial/ instead of resuming it' },
      force: forceFlag,
      quiet: quietFlag,
      json: { type: 'boolean', default: false, help: 'print a JSON summary as the last line of stdout' },
      threads: threadsFlag,
      device: deviceFlag,
      precision: precisionFlag,
      'max-gpu-memory': maxGpuMemoryFlag,
    },
    async run(f) {
      const device = applyDevice('e2e-qp', f);
      applyGpuBudget(f);
      applyThreads(f);
      const model = await modelDir(f);
      const s = overridesFromFlags(f, 'e2e-qp');
      // the library's e2eQp: flags without a default (--lr) take the presets of the model's bit width
      const r = await e2eQp({
        ...s.e2eQp,
        model,
        data: s.e2eQp!.data!,
        out: s.out!,
        seed: s.seed!,
        saveEvery: int(f, 'save-every'),
        restart: f['restart'] as boolean,
        force: f['force'] as boolean,
        progress: !f['quiet'],
        device,
        precision: f['precision'] as 'f32' | 'bf16' | undefined,
      });
      if (f['json']) console.log(JSON.stringify({ ...r, peakRssMiB: peakRssMiB() }));
      else {
        const resumed = r.resumedFrom ? `, resumed after step ${r.resumedFrom}` : '';
        console.log(`wrote ${r.out} (${r.steps} steps, loss ${r.firstLoss.toFixed(4)} -> ${r.lastLoss.toFixed(4)}, ${r.seconds.toFixed(1)} s${resumed})`);
      }
    },
  },
  quantize: {
    summary: 'EfficientQAT end to end: Block-AP then E2E-QP, from flags and/or a recipe file',
    flags: {
      recipe: { type: 'string', help: 'recipe file (.json, .yaml, .yml); flags override its values' },
      ...recipeFlagSpecs(),
      'max-ram': { type: 'number', min: 0, help: 'GiB of RAM for Block-AP activation caches before they go to disk (default: half of RAM)' },
      'save-every': { ...saveEveryFlag, help: `E2E-QP phase: ${saveEveryFlag.help}` },
      restart: { type: 'boolean', default: false, help: 'discard interrupted phases (OUT.block-ap.partial/, OUT.partial/) instead of resuming them, and an OUT.block-ap/ of other settings or inputs instead of refusing it' },
      force: forceFlag,
      quiet: quietFlag,
      json: { type: 'boolean', default: false, help: 'print a JSON summary as the last line of stdout' },
      threads: threadsFlag,
      device: deviceFlag,
      precision: precisionFlag,
      'max-gpu-memory': maxGpuMemoryFlag,
    },
    async run(f) {
      const device = applyDevice('quantize', f);
      applyGpuBudget(f);
      applyThreads(f);
      // the library's quantize: the recipe file's values, the flags over them, the presets for the rest
      const r = await quantize({
        ...overridesFromFlags(f),
        recipe: f['recipe'] as string | undefined,
        progress: !f['quiet'],
        maxRamBytes: f['max-ram'] !== undefined ? (f['max-ram'] as number) * 2 ** 30 : undefined,
        saveEvery: int(f, 'save-every'),
        restart: f['restart'] as boolean,
        force: f['force'] as boolean,
        device,
        precision: f['precision'] as 'f32' | 'bf16' | undefined,
      });
      if (f['json']) console.log(JSON.stringify({ ...r, peakRssMiB: peakRssMiB() }));
      else {
        const resumed = r.e2eQpResumedFrom ? `, resumed after step ${r.e2eQpResumedFrom}` : '';
        console.log(`wrote ${r.out} (Block-AP ${r.blockApSeconds.toFixed(1)} s, E2E-QP ${r.e2eQpSeconds.toFixed(1)} s${resumed})`);
        if (r.eval) {
          const base = r.eval.baseline ?? null;
          for (const [data, p] of Object.entries(r.eval.perplexity)) {
            const fp = base?.perplexity[data];
            console.log(`${data}: ppl ${p.ppl.toFixed(4)}  nll ${p.nll.toFixed(5)}  windows ${p.windows} x ${p.seqlen} tokens${fp ? `  (full precision: ppl ${fp.ppl.toFixed(4)})` : ''}`);
          }
          if (r.eval.zeroShot) console.log(`${base?.zeroShot ? 'quantized:\n' : ''}${formatZeroShot(r.eval.zeroShot)}`);
          if (base?.zeroShot) console.log(`full precision:\n${formatZeroShot(base.zeroShot)}`);
          console.log(`evaluation written to ${r.out}/eqat-eval.json`);
        }
      }
    },
  },
  report: {
    summary: 'write (again) report.html of a block-ap, e2e-qp or quantize output: loss curves, evaluation, recipe, timings, peak memory',
    flags: {
      model: { type: 'string', required: true, help: 'the output directory of eqat block-ap, e2e-qp or quantize' },
      json: { type: 'boolean', default: false, help: 'print {"report": path, "notes": [...]} as the last line of stdout' },
      quiet: quietFlag,
    },
    async run(f) {
      const dir = str(f, 'model');
      checkInputPath('--model', dir, 'directory', 'the output directory of eqat block-ap, e2e-qp or quantize');
      // the notes (log lines left out) go to stderr, as warnings do, --quiet or not
      const notes = writeReport(dir);
      for (const n of notes) console.error(`eqat report: ${n}`);
      const report = join(dir, REPORT_FILE);
      console.log(f['json'] ? JSON.stringify({ report, notes }) : `wrote ${report}`);
    },
  },
  export: {
    summary: 'write a quantized checkpoint for other runtimes: GGUF (llama.cpp) or ONNX (onnxruntime, transformers.js)',
    flags: {
      model: { type: 'string', required: true, help: 'quantized model directory (eqat output), or a hub name org/name[@revision]' },
      format: { type: 'string', required: true, choices: ['gguf', 'onnx'], help: 'output format' },
      out: { type: 'string', required: true, help: 'output: a .gguf file, or a directory for onnx' },
      'gguf-type': { type: 'string', default: GGUF_TYPE_CHOICES[0], choices: GGUF_TYPE_CHOICES, help: 'GGUF weight type; auto = the exact mapping for the bit width, f32 = exact float weights (large; llama.cpp then computes in float, as eqat does)' },
      'allow-lossy': { type: 'boolean', default: false, help: 'allow a GGUF type that cannot represent the weights exactly' },
      'embedding-type': {
        type: 'string',
        default: GGUF_EMBEDDING_CHOICES[0],
        choices: GGUF_EMBEDDING_CHOICES,
        help: 'GGUF embeddings / lm_head type; auto = f16 when exact, else the checkpoint\'s own (bf16, f32)',
      },
      'external-data': { type: 'boolean', default: false, help: 'ONNX: weights in an external data file (automatic above 1.75 GiB)' },
      force: forceFlag,
      json: { type: 'boolean', default: false, help: 'print the export report as JSON' },
      quiet: quietFlag,
    },
    async run(f) {
      const out = str(f, 'out');
      const report = await exportModel({
        model: await modelDir(f),
        format: str(f, 'format') as 'gguf' | 'onnx',
        out,
        ggufType: str(f, 'gguf-type') as GgufExportOptions['type'],
        allowLossy: f['allow-lossy'] as boolean,
        embeddingType: str(f, 'embedding-type') as GgufExportOptions['embeddingType'],
        externalData: f['external-data'] ? true : 'auto',
        force: f['force'] as boolean,
      });
      console.log(f['json'] ? JSON.stringify(report) : `wrote ${out}\n${JSON.stringify(report, null, 2)}`);
    },
  },
};
