// Block-AP, the first phase of EfficientQAT: one decoder block at a time, train all of its
// parameters (linear weights, norm weights, biases, per-group step sizes s and zero points z)
// through fake-quantized weights, minimising MSE(fp_block(X_fp), qblock(X_q)).
//
// Per block i (as the official implementation):
//   targets  Y    = fp_block_i(X_fp)            (computed in place: the X_fp cache becomes Y = X_fp of block i+1)
//   init     s, z = min-max per group of every linear's weight
//   train    AdamW (wd 0), groups {s, z} at quant_lr and {weights, norms, biases} at weight_lr, cosine
//            from lr to lr/20 over epochs·⌊train_size/batch⌋ steps, one sample order for every epoch
//   freeze   s → f16, z → integer, q = quantize(W) on that grid; W ← (q − z)·s_f16;
//            the block's shard is written
//   advance  X_q ← qblock_i(X_q)
// `--epochs 0` is round-to-nearest with the min-max init.
//
// Resume: each finished block is a final checkpoint shard plus a state file in `<out>.partial/`
// that records the recipe and the identity of the model and calibration data by content
// (src/io/fingerprint.ts). A rerun of the same command on the same inputs replays the finished
// blocks forward (fp and frozen) to rebuild the activation caches, drops the interrupted block's
// log lines, then continues; the checkpoint equals an uninterrupted run's byte for byte. Other
// settings or inputs (a corpus or model changed at the same path) are refused naming what
// differs; `restart` discards the state. The finished checkpoint appears at `<out>` only by a
// rename at the very end.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, appendFileSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { totalmem } from 'node:os';
import { Tensor } from '../engine/tensor.js';
import { BF16_NEEDS_CUDA } from '../engine/cuda.js';
import { WeightSource, loadBlockParams } from '../model/weights.js';
import { checkPositions, type ModelConfig } from '../model/config.js';
import { checkInputPath } from '../io/errors.js';
import { resolveModel } from '../io/hub.js';
import { loadConfig } from '../io/hf-config.js';
import { resolveCorpus } from '../data/named-datasets.js';
import { embeddingForward } from '../ops/embedding.js';
import { modelLayoutProblems } from '../quant/formats.js';
import { SafetensorsFile } from '../io/safetensors.js';
import { writeSafetensors } from '../io/safetensors-write.js';
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
import { ActivationCache } from './activation-cache.js';
import { BlockTrainer, type BlockApTrainer } from './block-trainer.js';
import { cpuBackend } from '../backend/cpu.js';
import { cudaBackend } from '../backend/cuda.js';
import { reporter } from '../cli/progress.js';
import type { OnEvent } from './events.js';
import { eqatVersion } from '../engine/version.js';
import { validateCommandSettings } from './recipe.js';
import { UsageError } from '../cli/args.js';
import { claimOutput, explainSystemError, removeTemporaries, interruptionPoint, publishOutput, throwIfAborted, type OutputClaim } from '../io/output.js';
import { peakRssBytes, writeReport } from '../report/report.js';
import { modelIdentity, inputDifference, otherRunError, unusableStateError, type InputIdentity } from '../io/fingerprint.js';
import { isJsonObject } from '../io/errors.js';
import { kebab } from './e2e-qp.js';

/** The recipe: every setting that changes the result. */
export interface BlockApRecipe {
  model: string;
  calib: string | null;
  wbits: number;
  groupSize: number;
  trainSize: number;
  valSize: number;
  seqlen: number;
  batchSize: number;
  epochs: number;
  quantLr: number;
  weightLr: number;
  minLrFactor: number;
  weightDecay: number;
  seed: number;
}

export interface BlockApOptions extends BlockApRecipe {
  out: string;
  /** Where the arithmetic runs (default cpu); results agree to rounding, not bit for bit. */
  device?: 'cpu' | 'cuda';
  /** GEMM input precision on CUDA (default bf16; f32 available); the CPU computes in f32 only. */
  precision?: 'f32' | 'bf16';
  /** RAM budget for the activation caches, bytes; beyond it they go to disk. */
  maxRamBytes?: number;
  /** No progress on stderr (the CLI's bars and log lines). */
  quiet?: boolean;
  /** Called with every progress event of the run (src/pipeline/events.ts), in order. */
  onEvent?: OnEvent;
  /**
   * Cancellation: once aborted, the run stops at its next step (as for SIGINT), keeping the
   * finished blocks in `<out>.partial/` for a rerun to resume, and rejects with AbortedError.
   */
  signal?: AbortSignal;
  /** Discard an interrupted run's state in `<out>.partial/` and start from block 0. */
  restart?: boolean;
  /** Replace an existing `out` (once the new checkpoint is complete). */
  force?: boolean;
  /** Called after every training step (tests use it to interrupt a run). */
  onStep?: (block: number, step: number) => void;
  /**
   * Extra fields recorded in eqat-recipe.json (the mark of `eqat quantize`), written before the
   * checkpoint is published so that no published checkpoint lacks them.
   */
  record?: Record<string, unknown>;
}

/** Paper defaults (EfficientQAT Block-AP). */
export function blockApDefaults(wbits: number): Omit<BlockApRecipe, 'model' | 'calib' | 'wbits' | 'groupSize'> {
  return {
    trainSize: 4096,
    valSize: 64,
    seqlen: 2048,
    batchSize: 2,
    epochs: 2,
    quantLr: 1e-4,
    weightLr: wbits === 2 ? 2e-5 : 1e-5,
    minLrFactor: 20,
    weightDecay: 0,
    seed: 2,
  };
}

export interface BlockLog {
  block: number;
  epoch: number; // 0 = before training (min-max init)
  trainLoss: number | null;
  valLoss: number | null;
  seconds: number;
}

/** Wall seconds of a run by phase, summed over blocks (device work included: each phase ends with a read back). */
export interface BlockApPhases {
  embed: number; // block-0 inputs of every window into the caches
  load: number; // reading each block's weights
  fpPass: number; // full-precision block outputs (the targets) over every window
  valPass: number; // validation losses (before training and after each epoch)
  train: number; // the training steps, batch reads from the caches included
  write: number; // freezing the block and writing its shard
  frozenPass: number; // the quantized block's outputs (the next block's inputs) over every window
}

export interface BlockApResult {
  out: string;
  blocks: { block: number; valLossInit: number | null; valLoss: number | null; trainLoss: number | null; seconds: number }[];
  seconds: number;
  phases: BlockApPhases;
  resumedFrom: number;
  cachesOnDisk: boolean;
}

/** Cosine annealing from lr to lr/minLrFactor over totalSteps (CosineAnnealingLR closed form). */
export function cosineLr(lr: number, minLrFactor: number, step: number, totalSteps: number): number {
  const etaMin = lr / minLrFactor;
  if (totalSteps <= 0) return lr;
  return etaMin + ((lr - etaMin) * (1 + Math.cos((Math.PI * step) / totalSteps))) / 2;
}

/**
 * Checks everything about a recipe that can be checked before any work; throws naming the flag.
 * The settings are checked by the recipe schema (validateCommandSettings), as the flags are.
 */
export function validateBlockAp(opts: BlockApOptions, cfg: ModelConfig): void {
  const fail = (flag: string, msg: string): never => {
    throw new UsageError(`--${flag}: ${msg}`);
  };
  validateCommandSettings('block-ap', opts);
  if (opts.epochs > 0) checkPositions(cfg, opts.seqlen, `--seqlen ${opts.seqlen}`, opts.model);
  const { indivisible, gptq } = modelLayoutProblems(cfg, opts.groupSize, opts.wbits);
  const first = indivisible[0];
  if (first) fail('group-size', `${opts.groupSize} does not divide ${first.field} = ${first.inFeatures} of ${opts.model}`);
  if (gptq) fail('group-size', `${opts.model} cannot be stored as a GPTQ checkpoint: ${gptq}`);
  if (opts.precision !== undefined && opts.precision !== 'f32' && opts.precision !== 'bf16') fail('precision', `must be f32 or bf16, got ${String(opts.precision)}`);
  if (opts.precision === 'bf16' && (opts.device ?? 'cpu') !== 'cuda') fail('precision', BF16_NEEDS_CUDA);
}

/** `<out>.partial/state.json`: what the run is and how far it got, rewritten after every block. */
interface PartialState {
  recipe: BlockApRecipe;
  /** The model and calibration data by content, as the run found them when it started. */
  inputs: InputIdentity;
  finishedBlocks: number;
}

/**
 * The blocks an interrupted run left in `partial` (0 when there is none) if it is this run:
 * same recipe, same inputs. Another run's state is refused naming what differs, an unreadable
 * one naming the file; both errors say that --restart discards it.
 */
function finishedBlocksIn(partial: string, recipe: BlockApRecipe, inputs: InputIdentity, cfg: ModelConfig): number {
  const statePath = join(partial, 'state.json');
  if (!existsSync(statePath)) return 0;
  let state: Partial<PartialState>;
  try {
    state = JSON.parse(readFileSync(statePath, 'utf8')) as Partial<PartialState>;
  } catch (e) {
    throw unusableStateError(statePath, 'Block-AP', (e as Error).message);
  }
  if (!isJsonObject(state) || !isJsonObject(state.recipe)) throw unusableStateError(statePath, 'Block-AP', 'no recipe in it');
  const fb = state.finishedBlocks;
  if (!Number.isSafeInteger(fb) || fb! < 0 || fb! > cfg.numLayers) {
    throw unusableStateError(statePath, 'Block-AP', `finishedBlocks is ${JSON.stringify(fb)}, not a block count from 0 to ${cfg.numLayers}`);
  }
  for (const k of Object.keys(recipe) as (keyof BlockApRecipe)[]) {
    if (JSON.stringify(state.recipe[k]) !== JSON.stringify(recipe[k])) {
      throw otherRunError(partial, 'Block-AP', `${k} (--${kebab(k)}) is ${JSON.stringify(state.recipe[k])} in the saved state, ${JSON.stringify(recipe[k])} now`);
    }
  }
  const diff = inputDifference(state.inputs, inputs, 'the calibration data', 'in the saved state');
  if (diff) throw otherRunError(partial, 'Block-AP', diff);
  let finished = fb!;
  for (let i = 0; i < finished; i++) {
    if (!existsSync(join(partial, shardName(i, shardCount(cfg))))) finished = i;
  }
  return finished;
}

/** Keeps the log lines of the blocks before `finished`: an interrupted block logs again when it reruns. */
function truncateLog(logPath: string, finished: number): void {
  if (!existsSync(logPath)) return;
  const kept = readFileSync(logPath, 'utf8')
    .split('\n')
    .filter((line) => {
      try {
        return (JSON.parse(line) as BlockLog).block < finished;
      } catch {
        return false; // a line cut short by the interruption, or the empty tail
      }
    });
  writeFileSync(logPath + '.tmp', kept.map((l) => l + '\n').join(''));
  renameSync(logPath + '.tmp', logPath);
}

function recipeOf(o: BlockApOptions): BlockApRecipe {
  return {
    model: resolve(o.model),
    calib: o.calib ? resolve(o.calib) : null,
    wbits: o.wbits,
    groupSize: o.groupSize,
    trainSize: o.trainSize,
    valSize: o.valSize,
    seqlen: o.seqlen,
    batchSize: o.batchSize,
    epochs: o.epochs,
    quantLr: o.quantLr,
    weightLr: o.weightLr,
    minLrFactor: o.minLrFactor,
    weightDecay: o.weightDecay,
    seed: o.seed,
  };
}

/**
 * What runBlockAp checks and builds before it writes anything: the recipe against the model,
 * the calibration windows (a bad --calib fails here) and the trainer's memory (on a GPU, all of
 * it: a run that does not fit stops here).
 */
async function prepareBlockAp(opts: BlockApOptions, src: WeightSource) {
  if (src.quant) throw new Error(`--model ${opts.model}: is already quantized; Block-AP needs a full-precision checkpoint`);
  const cfg = src.cfg;
  validateBlockAp(opts, cfg);
  src.checkTensors();
  // every weight is read (and checked for NaN/Inf) now, not when its block comes
  src.checkFiniteBlocks();
  headShardTensors(src.safetensors, cfg);
  const recipe = recipeOf(opts);
  const training = opts.epochs > 0;
  let windows: ReturnType<typeof sampleWindows> | null = null;
  const inputs: InputIdentity = { model: modelIdentity(opts.model), data: null };
  if (training) {
    const tok = loadTokenizer(opts.model);
    const corpus = await cachedTokenStream(opts.calib!, opts.model, tok);
    windows = sampleWindows(corpus.tokens, tok, opts, `--calib ${opts.calib}`);
    inputs.data = corpus.identity;
  }
  const device = opts.device ?? 'cpu';
  const precision = opts.precision ?? (device === 'cuda' ? 'bf16' : 'f32');
  const B = training ? opts.batchSize : 1;
  const T = training ? opts.seqlen : 1;
  const trainer: BlockApTrainer =
    device === 'cuda'
      ? new BlockTrainer(cudaBackend, cfg, B, T, opts.wbits, opts.groupSize, training, precision)
      : new BlockTrainer(cpuBackend, cfg, B, T, opts.wbits, opts.groupSize, training, precision);
  return { cfg, recipe, inputs, training, windows, device, precision, trainer, B, T };
}

/**
 * Runs Block-AP into `opts.out`, holding it (src/io/output.ts) for the run: an existing output
 * without `force`, an output among the inputs and one another run holds are refused first;
 * SIGINT / SIGTERM (and an aborted `opts.signal`) stop it at the next step saying which blocks
 * were kept.
 */
export async function runBlockAp(opts: BlockApOptions): Promise<BlockApResult> {
  throwIfAborted(opts.signal);
  opts = await resolveBlockApInputs(opts);
  const inputs = [{ flag: '--model', path: opts.model }, ...(opts.calib ? [{ flag: '--calib', path: opts.calib }] : [])];
  const companions = [resolve(opts.out) + '.partial'];
  const output = claimOutput({ out: opts.out, flag: '--out', force: opts.force ?? false, inputs, command: 'eqat block-ap', companions, resumable: true }, { interruptible: true });
  try {
    return await blockAp(opts, output);
  } catch (e) {
    throw explainSystemError(e, output.out, true);
  } finally {
    output.release();
  }
}

/**
 * The run with its model and calibration data as local paths: a hub name `org/name[@revision]`
 * of --model and a dataset name of --calib (wikitext2, c4, redpajama) are resolved through the
 * Hugging Face cache, downloading what is missing (src/io/hub.ts, src/data/named-datasets.ts);
 * the settings are checked first, and the model's config before its weights are downloaded.
 */
async function resolveBlockApInputs(opts: BlockApOptions): Promise<BlockApOptions> {
  if (existsSync(opts.model) && (!opts.calib || existsSync(opts.calib))) return opts;
  validateCommandSettings('block-ap', opts);
  const hub = { quiet: opts.quiet ?? false };
  const model = await resolveModel(opts.model, { ...hub, flag: '--model', beforeWeights: (dir) => validateBlockAp(opts, loadConfig(dir)) });
  const calib = opts.calib && opts.epochs > 0 ? await resolveCorpus(opts.calib, { ...hub, flag: '--calib' }) : opts.calib;
  return { ...opts, model, calib };
}

async function blockAp(opts: BlockApOptions, output: OutputClaim): Promise<BlockApResult> {
  const t0 = performance.now();
  const out = output.out;
  const partial = out + '.partial';
  const keep = (blocks: number): void => {
    output.kept = blocks > 0 ? `block${blocks > 1 ? `s 1–${blocks}` : ' 1'} finished in ${partial}/` : ''; // 1-based, as people count
  };
  checkInputPath('--model', opts.model, 'directory', 'a Hugging Face model directory');
  if (opts.epochs > 0 && opts.calib) checkInputPath('--calib', opts.calib, 'file', 'a .txt, .jsonl or .parquet file');
  const src = WeightSource.open(opts.model);
  // everything up to the trainer can refuse the run; the model files are closed when it does
  let prepared: Awaited<ReturnType<typeof prepareBlockAp>>;
  try {
    prepared = await prepareBlockAp(opts, src);
  } catch (e) {
    src.close();
    throw e;
  }
  const { cfg, recipe, inputs, training, windows, device, precision, trainer, B, T } = prepared;

  // resume bookkeeping (a refusal here releases the trainer and the model files)
  let finished = 0;
  const statePath = join(partial, 'state.json');
  const logPath = join(partial, 'block-ap-log.jsonl');
  try {
    if (opts.restart) rmSync(partial, { recursive: true, force: true });
    if (existsSync(statePath)) {
      finished = finishedBlocksIn(partial, recipe, inputs, cfg);
      truncateLog(logPath, finished);
    } else {
      rmSync(partial, { recursive: true, force: true });
      mkdirSync(partial, { recursive: true });
      writeJsonAtomic(statePath, { recipe, inputs, finishedBlocks: 0 } satisfies PartialState);
    }
  } catch (e) {
    trainer.free();
    src.close();
    throw e;
  }
  const resumedFrom = finished;
  keep(finished);
  const emit = reporter(opts);
  emit({ type: 'phase', phase: 'block-ap', out, resumedFrom, reused: false });
  const log = (entry: BlockLog): void => {
    appendFileSync(logPath, JSON.stringify(entry) + '\n');
    emit({ type: 'epoch', ...entry, of: cfg.numLayers });
  };

  const nShards = shardCount(cfg);
  const shardNames: string[][] = [];
  const summary: BlockApResult['blocks'] = [];
  const quantCfg = { bits: opts.wbits, groupSize: opts.groupSize, checkpointFormat: 'gptq_v2' as const, sym: false, descAct: false };

  const phases: BlockApPhases = { embed: 0, load: 0, fpPass: 0, valPass: 0, train: 0, write: 0, frozenPass: 0 };
  const timed = <T>(phase: keyof BlockApPhases, f: () => T): T => {
    const t = performance.now();
    try {
      return f();
    } finally {
      phases[phase] += (performance.now() - t) / 1000;
    }
  };
  let xfp: ActivationCache | null = null;
  let xq: ActivationCache | null = null;
  const total = opts.trainSize + opts.valSize;
  let cachesOnDisk = false;
  try {
    if (windows) {
      const C = cfg.hiddenSize;
      const bytes = 2 * ActivationCache.bytes(total, T, C);
      const budget = opts.maxRamBytes ?? totalmem() / 2;
      cachesOnDisk = bytes > budget;
      const make = (name: string) =>
        cachesOnDisk ? ActivationCache.onDisk(name, total, T, C, join(partial, 'cache')) : ActivationCache.inRam(name, total, T, C);
      xfp = make('x_fp');
      xq = make('x_q');
      // block-0 inputs: token embeddings of every train and val window
      timed('embed', () => {
        const emb = src.embedding();
        const ids = new Int32Array(T);
        for (let s = 0; s < total; s++) {
          ids.set(s < opts.trainSize ? windows.train.subarray(s * T, (s + 1) * T) : windows.val.subarray((s - opts.trainSize) * T, (s - opts.trainSize + 1) * T));
          const x = trainer.x.rows(0, 1);
          embeddingForward(x.view([T, C]), Tensor.fromI32(ids), emb);
          xfp!.write(s, 1, x.f32);
          xq!.write(s, 1, x.f32);
        }
      });
    }

    // replay finished blocks to rebuild the caches
    for (let i = 0; i < finished; i++) {
      const shard = shardName(i, nShards);
      const shardPath = join(partial, shard);
      // a finished block's shard is resume state too: one that cannot be read says how to start over
      const unusable = (e: unknown): Error => {
        const msg = (e as Error).message;
        return unusableStateError(shardPath, 'Block-AP', msg.startsWith(`${shardPath}: `) ? msg.slice(shardPath.length + 2) : msg);
      };
      let st: SafetensorsFile;
      try {
        st = SafetensorsFile.open(shardPath);
      } catch (e) {
        throw unusable(e);
      }
      try {
        shardNames.push(st.names());
        if (training) {
          src.loadBlock(i, trainer.P);
          trainer.forwardCache('fp', xfp!, 0, total);
          try {
            loadBlockParams(st, shardPath, quantCfg, i, trainer.Wq);
          } catch (e) {
            throw unusable(e);
          }
          // norms and biases of the frozen block live in Wq's non-linear entries, which alias P
          trainer.forwardCache('frozen', xq!, 0, total);
        }
      } finally {
        st.close();
      }
      summary.push({ block: i, valLossInit: null, valLoss: null, trainLoss: null, seconds: 0 });
    }

    const stepsPerEpoch = training ? Math.floor(opts.trainSize / opts.batchSize) : 0;
    const totalSteps = opts.epochs * stepsPerEpoch;
    for (let i = finished; i < cfg.numLayers; i++) {
      const tb = performance.now();
      emit({ type: 'block-start', block: i, of: cfg.numLayers, steps: totalSteps });
      timed('load', () => src.loadBlock(i, trainer.P));
      let valLossInit: number | null = null;
      let valLoss: number | null = null;
      let trainLoss: number | null = null;
      if (training) {
        // targets: Y = fp_block(X_fp), in place (the cache then holds block i+1's fp inputs)
        timed('fpPass', () => trainer.forwardCache('fp', xfp!, 0, total));
        trainer.initQuant();
        if (opts.valSize > 0) {
          valLossInit = timed('valPass', () => trainer.evalFakeQuantLoss(xq!, xfp!, opts.trainSize, opts.valSize));
          log({ block: i, epoch: 0, trainLoss: null, valLoss: valLossInit, seconds: (performance.now() - tb) / 1000 });
        }
        let step = 0;
        const readBatch = (b: number): void => {
          xq!.read(b * B, B, trainer.x.f32);
          xfp!.read(b * B, B, trainer.y.f32);
        };
        for (let epoch = 0; epoch < opts.epochs; epoch++) {
          const te = performance.now();
          let sum = 0;
          readBatch(0);
          for (let b = 0; b < stepsPerEpoch; b++) {
            const lrQ = cosineLr(opts.quantLr, opts.minLrFactor, step, totalSteps);
            const lrW = cosineLr(opts.weightLr, opts.minLrFactor, step, totalSteps);
            trainer.submit(step, lrQ, lrW, opts.weightDecay);
            if (b + 1 < stepsPerEpoch) readBatch(b + 1); // while the step runs (on CUDA)
            const loss = trainer.finish();
            if (!Number.isFinite(loss)) {
              const culprit = trainer.firstNonFinite() ?? 'none: every input and parameter is finite, the block overflowed; lower --quant-lr / --weight-lr';
              throw new Error(`block ${i + 1}/${cfg.numLayers}, epoch ${epoch + 1}, step ${step + 1}: loss is ${loss}; first non-finite value: ${culprit}; stopping (no checkpoint written for this block)`);
            }
            sum += loss;
            step++;
            emit({ type: 'block-step', block: i, step, of: totalSteps, loss });
            opts.onStep?.(i, step);
            await interruptionPoint(opts.signal);
          }
          phases.train += (performance.now() - te) / 1000;
          trainLoss = sum / stepsPerEpoch;
          if (opts.valSize > 0) valLoss = timed('valPass', () => trainer.evalFakeQuantLoss(xq!, xfp!, opts.trainSize, opts.valSize));
          log({ block: i, epoch: epoch + 1, trainLoss, valLoss, seconds: (performance.now() - tb) / 1000 });
        }
      } else {
        trainer.initQuant();
      }
      if (i === resumedFrom && training) trainer.capture.noteIfEager(opts.quiet ?? false);
      timed('write', () => {
        const frozen = trainer.freeze();
        const tensors = blockShardTensors(i, cfg, frozen, trainer.Wq, opts.wbits, opts.groupSize);
        writeSafetensors(join(partial, shardName(i, nShards)), tensors);
        shardNames.push(tensors.map((t) => t.name));
      });
      if (training && i + 1 < cfg.numLayers) timed('frozenPass', () => trainer.forwardCache('frozen', xq!, 0, total));
      writeJsonAtomic(statePath, { recipe, inputs, finishedBlocks: i + 1 } satisfies PartialState);
      keep(i + 1);
      const seconds = (performance.now() - tb) / 1000;
      if (!training) log({ block: i, epoch: 0, trainLoss: null, valLoss: null, seconds });
      emit({ type: 'block-done', block: i, of: cfg.numLayers, seconds });
      summary.push({ block: i, valLossInit, valLoss, trainLoss, seconds });
      await interruptionPoint(opts.signal);
    }

    // the head shard, metadata, then the rename that makes the checkpoint visible
    const head = headShardTensors(src.safetensors, cfg);
    writeSafetensors(join(partial, shardName(cfg.numLayers, nShards)), head);
    shardNames.push(head.map((t) => t.name));
    writeCheckpointMetadata(partial, opts.model, opts.wbits, opts.groupSize, shardNames);
    writeJsonAtomic(join(partial, 'eqat-recipe.json'), {
      eqat: eqatVersion(),
      phase: 'block-ap',
      device,
      precision,
      recipe: { ...recipe, model: opts.model, calib: opts.calib },
      inputs,
      peak_rss_bytes: peakRssBytes(),
      ...(opts.record ?? {}),
    });
  } finally {
    xfp?.free();
    xq?.free();
    trainer.free();
    src.close();
  }
  rmSync(join(partial, 'cache'), { recursive: true, force: true });
  rmSync(statePath, { force: true });
  writeReport(partial, out);
  removeTemporaries(partial);
  publishOutput(output, partial);
  const seconds = (performance.now() - t0) / 1000;
  emit({ type: 'done', phase: 'block-ap', out, seconds });
  return { out, blocks: summary, seconds, phases, resumedFrom, cachesOnDisk };
}
