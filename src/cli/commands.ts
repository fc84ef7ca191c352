// The table of `eqat` subcommands: summary, flags (with defaults) and the function that runs.
// The flags of training settings on block-ap, e2e-qp and quantize come from the recipe schema
// (recipeFlagSpecs); the flags written here are the ones that are no recipe setting.
import { resolve } from 'node:path';
import { UsageError, type FlagSpecs, type ParsedFlags } from './args.js';
import { explainSystemError } from '../io/output.js';
import { evaluatePerplexity } from '../pipeline/eval.js';
import { WeightSource } from '../model/weights.js';
import { checkInputPath } from '../io/errors.js';
import { loadTokenizer } from '../io/tokenizer.js';
import { generateFromSource, type GenerateOptions } from '../pipeline/generate.js';
import { native } from '../engine/native.js';
import { blockApDefaults, runBlockAp } from '../pipeline/block-ap.js';
import { formatDemo, runDemo } from '../pipeline/demo.js';
import { E2E_QP_SAVE_EVERY, E2E_QP_SAVE_SECONDS, e2eQpDefaults, runE2eQp } from '../pipeline/e2e-qp.js';
import { resolveRecipe, runQuantize } from '../pipeline/quantize.js';
import { exportOnnx } from '../export/onnx.js';
import { exportGguf, GGUF_EMBEDDING_CHOICES, GGUF_TYPE_CHOICES, type GgufExportOptions } from '../export/gguf.js';
import { loadRecipeFile, overridesFromFlags, recipeFlagSpecs } from '../pipeline/recipe.js';
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

function applyThreads(f: ParsedFlags): void {
  if (f['threads'] !== undefined) native().setThreads(int(f, 'threads'));
}

export const COMMANDS: Record<string, Command> = {
  eval: {
    summary: 'perplexity of a model (full precision or eqat-quantized) on a text file',
    flags: {
      model: { type: 'string', required: true, help: 'model directory (Hugging Face checkpoint or eqat output)' },
      data: { type: 'string', required: true, help: 'text file (.txt; .jsonl/.parquet documents are joined by blank lines)' },
      seqlen: { type: 'int', default: 2048, min: 2, help: 'window length in tokens' },
      batch: { type: 'int', default: 4, min: 1, help: 'windows per forward step' },
      'max-windows': { type: 'int', min: 1, help: 'evaluate only the first N windows' },
      json: { type: 'boolean', default: false, help: 'print a JSON object as the last line of stdout' },
      quiet: quietFlag,
      threads: threadsFlag,
      device: deviceFlag,
      precision: precisionFlag,
      'max-gpu-memory': maxGpuMemoryFlag,
    },
    async run(f) {
      const device = applyDevice('eval', f);
      applyGpuBudget(f);
      applyThreads(f);
      const r = await evaluatePerplexity(str(f, 'model'), str(f, 'data'), {
        seqlen: int(f, 'seqlen'),
        batch: int(f, 'batch'),
        maxWindows: f['max-windows'] as number | undefined,
        device,
        precision: f['precision'] as 'f32' | 'bf16' | undefined,
        quiet: f['quiet'] as boolean,
      });
      if (f['json']) {
        console.log(JSON.stringify({ model: str(f, 'model'), data: str(f, 'data'), ...r, peakRssMiB: peakRssMiB() }));
      } else {
        console.log(
          `ppl ${r.ppl.toFixed(4)}  nll ${r.nll.toFixed(5)}  windows ${r.windows} x ${r.seqlen} tokens  ${r.seconds.toFixed(1)} s`,
        );
      }
    },
  },
  generate: {
    summary: 'generate text from a prompt (greedy by default)',
    flags: {
      model: { type: 'string', required: true, help: 'model directory' },
      prompt: { type: 'string', required: true, help: 'prompt text' },
      'max-new-tokens': { type: 'int', default: 32, min: 0, help: 'tokens to generate' },
      temperature: { type: 'number', default: 0, min: 0, help: 'sampling temperature; 0 is greedy' },
      seed: { type: 'int', default: 0, help: 'sampling seed' },
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
      const dir = str(f, 'model');
      checkInputPath('--model', dir, 'directory', 'a model directory');
      const src = WeightSource.open(dir);
      const tok = loadTokenizer(dir);
      const prompt = tok.encode(str(f, 'prompt'), { addSpecialTokens: true });
      const opts: GenerateOptions = {
        maxNewTokens: int(f, 'max-new-tokens'),
        temperature: f['temperature'] as number,
        seed: int(f, 'seed'),
        stopAtEos: true,
      };
      let ids: number[];
      try {
        ids = generateFromSource(src, prompt, opts, { device, precision });
      } finally {
        src.close();
      }
      const newIds = ids.slice(prompt.length);
      const text = tok.decode(newIds, { skipSpecialTokens: true });
      if (f['json']) console.log(JSON.stringify({ prompt_ids: prompt, output_ids: ids, text }));
      else console.log(str(f, 'prompt') + text);
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
      const wbits = s.wbits!;
      const r = await runBlockAp({
        ...blockApDefaults(wbits), // the presets of the bit width for flags without a default (--weight-lr)
        ...s.blockAp,
        model: s.model!,
        calib: s.calib ?? null,
        out: s.out!,
        wbits,
        groupSize: s.groupSize!,
        seed: s.seed!,
        maxRamBytes: f['max-ram'] !== undefined ? (f['max-ram'] as number) * 2 ** 30 : undefined,
        restart: f['restart'] as boolean,
        force: f['force'] as boolean,
        quiet: f['quiet'] as boolean,
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
      model: { type: 'string', required: true, help: 'quantized model directory (output of block-ap)' },
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
      checkInputPath('--model', str(f, 'model'), 'directory', 'a quantized model directory (the output of block-ap)');
      const probe = WeightSource.open(str(f, 'model'));
      const bits = probe.quant?.bits ?? 4;
      probe.close();
      const s = overridesFromFlags(f, 'e2e-qp');
      const r = await runE2eQp({
        ...e2eQpDefaults(bits), // the presets of the bit width for flags without a default (--lr)
        ...s.e2eQp,
        model: str(f, 'model'),
        data: s.e2eQp!.data!,
        out: s.out!,
        seed: s.seed!,
        saveEvery: int(f, 'save-every'),
        restart: f['restart'] as boolean,
        force: f['force'] as boolean,
        quiet: f['quiet'] as boolean,
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
      const file = f['recipe'] as string | undefined;
      const where = file ?? 'flags';
      const recipe = resolveRecipe(file ? loadRecipeFile(file) : {}, overridesFromFlags(f), where);
      const r = await runQuantize(recipe, {
        quiet: f['quiet'] as boolean,
        maxRamBytes: f['max-ram'] !== undefined ? (f['max-ram'] as number) * 2 ** 30 : undefined,
        saveEvery: int(f, 'save-every'),
        restart: f['restart'] as boolean,
        force: f['force'] as boolean,
        recipeFile: file,
        device,
        precision: f['precision'] as 'f32' | 'bf16' | undefined,
      });
      if (f['json']) console.log(JSON.stringify({ ...r, peakRssMiB: peakRssMiB() }));
      else {
        const resumed = r.e2eQpResumedFrom ? `, resumed after step ${r.e2eQpResumedFrom}` : '';
        console.log(`wrote ${r.out} (Block-AP ${r.blockApSeconds.toFixed(1)} s, E2E-QP ${r.e2eQpSeconds.toFixed(1)} s${resumed})`);
      }
    },
  },
  export: {
    summary: 'write a quantized checkpoint for other runtimes: GGUF (llama.cpp) or ONNX (onnxruntime, transformers.js)',
    flags: {
      model: { type: 'string', required: true, help: 'quantized model directory (eqat output)' },
      format: { type: 'string', required: true, choices: ['gguf', 'onnx'], help: 'output format' },
      out: { type: 'string', required: true, help: 'output: a .gguf file, or a directory for onnx' },
      'gguf-type': { type: 'string', default: GGUF_TYPE_CHOICES[0], choices: GGUF_TYPE_CHOICES, help: 'GGUF weight type; auto = the exact mapping for the bit width' },
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
      const model = str(f, 'model');
      checkInputPath('--model', model, 'directory', 'a quantized model directory (eqat output)');
      const out = str(f, 'out');
      let report: object;
      try {
        if (str(f, 'format') === 'onnx') {
          report = await exportOnnx(model, out, { externalData: f['external-data'] ? true : 'auto', force: f['force'] as boolean });
        } else {
          report = await exportGguf(model, out, {
            type: str(f, 'gguf-type') as GgufExportOptions['type'],
            allowLossy: f['allow-lossy'] as boolean,
            embeddingType: str(f, 'embedding-type') as GgufExportOptions['embeddingType'],
            force: f['force'] as boolean,
          });
        }
      } catch (e) {
        throw explainSystemError(e, resolve(out), false);
      }
      console.log(f['json'] ? JSON.stringify(report) : `wrote ${out}\n${JSON.stringify(report, null, 2)}`);
    },
  },
};
