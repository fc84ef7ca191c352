// E2E-QP with --device cuda (src/pipeline/e2e-trainer.ts on the CUDA backend) on the bundled llama-tiny,
// quantized by RTN here, against the same run on the CPU, on the backends of backends.ts: with
// f32 GEMMs every step's loss and gradient norm and the trained step sizes agree to rounding;
// with bf16 GEMMs (the CUDA default) the losses agree to about 1%; a state saved by a CUDA run
// resumes on the CPU; and the CUDA run releases every device allocation it made. A micro-batch
// with a token id or label outside the vocabulary is refused on the host with the error the
// ops' device checks would raise (those checks are skipped inside the graph).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setCudaBackend } from '../../src/engine/cuda.js';
import { e2eQpDefaults, runE2eQp, ScaleState, type E2eQpOptions, type E2eQpStepLog } from '../../src/pipeline/e2e-qp.js';
import { WeightSource } from '../../src/model/weights.js';
import { PackedModel } from '../../src/model/quantized.js';
import { E2eTrainer } from '../../src/pipeline/e2e-trainer.js';
import { cudaBackend } from '../../src/backend/cuda.js';
import { BLOCK_LINEARS } from '../../src/model/block.js';
import { REPO, rtnTiny } from '../golden.js';
import { assertClose } from '../util.js';
import { backendCases } from './backends.js';
import { EmulatorBackend } from './emu/backend.js';
import { pipelineSkip } from '../tier.js';

process.env['EQAT_CACHE_DIR'] ??= mkdtempSync(join(tmpdir(), 'eqat-cache-'));
const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const work = mkdtempSync(join(tmpdir(), 'eqat-e2e-cuda-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

const quantized = (): Promise<string> => rtnTiny(2, 32);

// two optimizer steps of two micro-batches each: accumulation, clipping (norms are far above
// 0.05) and AdamW all run; small enough for the kernel emulator
async function options(out: string, over: Partial<E2eQpOptions> = {}): Promise<E2eQpOptions> {
  return {
    ...e2eQpDefaults(2),
    model: await quantized(),
    data: CALIB,
    out,
    trainSize: 8,
    seqlen: 16,
    batchSize: 4,
    microBatchSize: 2,
    lr: 1e-3,
    warmupRatio: 0,
    maxGradNorm: 0.05,
    quiet: true,
    saveEvery: 0,
    ...over,
  };
}

function stepLog(dir: string): E2eQpStepLog[] {
  return readFileSync(join(dir, 'e2e-qp-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as E2eQpStepLog);
}

function scalesOf(dir: string): Float32Array[] {
  const src = WeightSource.open(dir);
  const m = PackedModel.load(src);
  src.close();
  return m.blocks.flatMap((b) => BLOCK_LINEARS.map(([k]) => b.scales[k].f32));
}

let cpuRun: Promise<string> | null = null;
function cpuOut(): Promise<string> {
  cpuRun ??= options(join(work, 'cpu')).then(runE2eQp).then((r) => r.out);
  return cpuRun;
}

for (const bc of backendCases()) {
  test(`cuda E2E-QP --device cuda matches the CPU run, f32 and bf16; its saved state resumes on the CPU [${bc.name}]`, { skip: pipelineSkip(bc) }, async () => {
    const cpu = await cpuOut();
    const b = bc.backend();
    const live = b instanceof EmulatorBackend ? b.liveAllocations : 0;
    const graphLaunches = b instanceof EmulatorBackend ? b.graphLaunches : 0;
    const f32 = join(work, `cuda-f32-${bc.name}`), bf16 = join(work, `cuda-bf16-${bc.name}`), handoff = join(work, `handoff-${bc.name}`);
    setCudaBackend(b);
    try {
      await runE2eQp(await options(f32, { device: 'cuda', precision: 'f32' }));
      await runE2eQp(await options(bf16, { device: 'cuda' }));
      // a CUDA run that saves after step 1 and is stopped there
      await assert.rejects(
        runE2eQp(
          await options(handoff, {
            device: 'cuda',
            precision: 'f32',
            saveEvery: 1,
            onStep: (s) => {
              if (s === 1) throw new Error('stop after step 1');
            },
          }),
        ),
        /stop after step 1/,
      );
    } finally {
      setCudaBackend(null);
    }
    if (b instanceof EmulatorBackend) {
      assert.equal(b.liveAllocations, live, 'device allocations leaked');
      assert.equal(b.liveGraphs, 0, 'graphs released');
      // 4 micro-batches per full run: eager, captured, replayed, replayed; the stopped run has 2
      assert.equal(b.graphLaunches - graphLaunches, 3 + 3 + 1, 'micro-batches replayed from graphs');
    }
    const want = stepLog(cpu);
    const got = stepLog(f32);
    assert.equal(got.length, 2);
    for (let i = 0; i < want.length; i++) {
      assertClose([got[i]!.loss, got[i]!.gradNorm], [want[i]!.loss, want[i]!.gradNorm], { atol: 0, rtol: 1e-4, what: `f32 step ${i + 1}` });
      assertClose([stepLog(bf16)[i]!.loss], [want[i]!.loss], { atol: 0, rtol: 2e-2, what: `bf16 step ${i + 1}` });
    }
    const sc = scalesOf(cpu), sg = scalesOf(f32);
    for (let j = 0; j < sc.length; j++) assertClose(sg[j]!, sc[j]!, { atol: 0, rtol: 2e-3, what: `trained scales ${j}` });
    const rec = JSON.parse(readFileSync(join(f32, 'eqat-recipe.json'), 'utf8')) as { e2e_qp: { device: string; precision: string } };
    assert.deepEqual([rec.e2e_qp.device, rec.e2e_qp.precision], ['cuda', 'f32']);
    // the CUDA run's saved state finishes on the CPU, where the CPU run would have gone
    const r = await runE2eQp(await options(handoff));
    assert.equal(r.resumedFrom, 1);
    const sh = scalesOf(handoff);
    for (let j = 0; j < sc.length; j++) assertClose(sh[j]!, sc[j]!, { atol: 0, rtol: 2e-3, what: `resumed scales ${j}` });
  });
}

test('e2e-qp --precision bf16 without --device cuda is refused before anything is written', async () => {
  await assert.rejects(runE2eQp(await options(join(work, 'refused'), { precision: 'bf16' })), /--precision: bf16 needs --device cuda/);
});

for (const bc of backendCases()) {
  test(`cuda E2E-QP micro-batch: an id or label outside the vocabulary is refused naming the op, row and value [${bc.name}]`, { skip: bc.skip }, async () => {
    const src = WeightSource.open(await quantized());
    const model = PackedModel.load(src);
    src.close();
    const V = model.cfg.vocabSize;
    const b = bc.backend();
    const live = b instanceof EmulatorBackend ? b.liveAllocations : 0;
    setCudaBackend(b);
    const stepper = new E2eTrainer(cudaBackend, model, new ScaleState(model.blocks), 1, 4, 'f32');
    try {
      const ids = Int32Array.from([1, 2, 3, 4]), labels = Int32Array.from([2, 3, 4, -100]);
      ids[2] = V;
      assert.throws(() => stepper.microStep(ids, labels, 1), new RegExp(`^RangeError: embeddingForwardCuda: argument 'ids': id ${V} at row 2 is outside \\[0, ${V}\\)$`));
      ids[2] = -1;
      assert.throws(() => stepper.microStep(ids, labels, 1), /^RangeError: embeddingForwardCuda: argument 'ids': id -1 at row 2 is outside/);
      ids[2] = 3;
      labels[1] = V + 7;
      assert.throws(
        () => stepper.microStep(ids, labels, 1),
        new RegExp(`^RangeError: crossEntropyForwardBackwardCuda: argument 'targets': row 1 has target ${V + 7}, outside \\[0, ${V}\\) and not the ignore index -100$`),
      );
      // the refused batches left the stepper usable: a good one gives a finite loss
      labels[1] = 3;
      assert.ok(Number.isFinite(stepper.microStep(ids, labels, 1)));
    } finally {
      stepper.free();
      setCudaBackend(null);
    }
    if (b instanceof EmulatorBackend) assert.equal(b.liveAllocations, live, 'device allocations leaked');
  });
}
