// Block-AP with --device cuda on the bundled llama-tiny against the same run on the CPU, on
// the CUDA backends of backends.ts (the GPU where present, the CPU emulator of the kernel
// sources elsewhere): the per-block losses agree to rounding, the checkpoints hold the same
// frozen integers except where a weight sits on a rounding boundary, the norms agree, and the
// CUDA run releases every device allocation it made.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setCudaBackend } from '../../src/engine/cuda.js';
import { runBlockAp, blockApDefaults, type BlockApOptions } from '../../src/pipeline/block-ap.js';
import { WeightSource } from '../../src/model/weights.js';
import { allocBlockParams, BLOCK_LINEARS } from '../../src/model/block.js';
import { REPO, TINY } from '../golden.js';
import { assertClose } from '../util.js';
import { backendCases } from './backends.js';
import { EmulatorBackend } from './emu/backend.js';

process.env['EQAT_CACHE_DIR'] ??= mkdtempSync(join(tmpdir(), 'eqat-cache-'));

const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');

function opts(out: string, device: 'cpu' | 'cuda'): BlockApOptions {
  // small enough for the emulator (a process per kernel launch): 4 blocks × 2 epochs × 2 steps
  return {
    ...blockApDefaults(2),
    model: TINY,
    calib: CALIB,
    out,
    wbits: 2,
    groupSize: 32,
    trainSize: 4,
    valSize: 3, // odd: the evaluation's batch-1 tail runs too
    seqlen: 16,
    batchSize: 2,
    epochs: 2,
    quiet: true,
    device,
  };
}

const dir = mkdtempSync(join(tmpdir(), 'eqat-bap-cuda-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
let cpuRun: Promise<Awaited<ReturnType<typeof runBlockAp>>> | null = null;

for (const bc of backendCases()) {
  test(`cuda Block-AP --device cuda matches the CPU run on llama-tiny [${bc.name}]`, { skip: bc.skip }, async () => {
    cpuRun ??= runBlockAp(opts(join(dir, 'cpu'), 'cpu'));
    const cpu = await cpuRun;
    const b = bc.backend();
    const live = b instanceof EmulatorBackend ? b.liveAllocations : 0;
    setCudaBackend(b);
    let gpu;
    try {
      gpu = await runBlockAp(opts(join(dir, `cuda-${bc.name}`), 'cuda'));
    } finally {
      setCudaBackend(null);
    }
    if (b instanceof EmulatorBackend) assert.equal(b.liveAllocations, live, 'device allocations leaked');

    assert.equal(gpu.blocks.length, cpu.blocks.length);
    for (let i = 0; i < cpu.blocks.length; i++) {
      const c = cpu.blocks[i]!, g = gpu.blocks[i]!;
      for (const k of ['valLossInit', 'trainLoss', 'valLoss'] as const) {
        assertClose([g[k]!], [c[k]!], { atol: 0, rtol: 2e-3, what: `block ${i} ${k}` });
      }
    }
    const recipe = JSON.parse(readFileSync(join(gpu.out, 'eqat-recipe.json'), 'utf8')) as { device: string };
    assert.equal(recipe.device, 'cuda');

    const qc = WeightSource.open(cpu.out), qg = WeightSource.open(gpu.out);
    const pc = allocBlockParams(qc.cfg).params, pg = allocBlockParams(qc.cfg).params;
    let weights = 0, differ = 0;
    for (let i = 0; i < qc.cfg.numLayers; i++) {
      qc.loadBlock(i, pc);
      qg.loadBlock(i, pg);
      for (const [key] of BLOCK_LINEARS) {
        const a = pc[key].f32, g = pg[key].f32;
        weights += a.length;
        for (let j = 0; j < a.length; j++) if (a[j] !== g[j]) differ++;
      }
      assertClose(pg.inputNorm.f32, pc.inputNorm.f32, { atol: 1e-6, rtol: 1e-4, what: `block ${i} input norm` });
      assertClose(pg.postNorm.f32, pc.postNorm.f32, { atol: 1e-6, rtol: 1e-4, what: `block ${i} post norm` });
    }
    qc.close();
    qg.close();
    assert.ok(differ <= weights * 1e-3, `${differ} of ${weights} dequantized weights differ (rounding-boundary flips only)`);
  });
}
