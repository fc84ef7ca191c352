// Zero-shot multiple choice on CUDA (eval --tasks --device cuda: the resident Model on the CUDA
// backend, batches of right-padded sequences whose length changes from batch to batch) against
// the CPU's log-likelihoods of the same docs, full precision and packed, f32 and bf16 GEMMs, on
// the backends of backends.ts; no device allocation may outlive the evaluation.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { setCudaBackend } from '../../src/engine/cuda.js';
import { evaluateZeroShot, type ZeroShotOptions } from '../../src/pipeline/zero-shot.js';
import { parseTaskList } from '../../src/data/mc-tasks.js';
import { REPO, rtnTiny, TINY } from '../golden.js';
import { backendCases } from './backends.js';
import { EmulatorBackend } from './emu/backend.js';
import { pipelineSkip } from '../tier.js';

const base: ZeroShotOptions = { tasks: parseTaskList('piqa,hellaswag,winogrande', '--tasks'), taskData: join(REPO, 'test', 'fixtures', 'tasks'), limit: 3, batch: 4, quiet: true, details: true };

for (const bc of backendCases()) {
  test(`cuda zero-shot matches the CPU log-likelihoods, full precision and packed [${bc.name}]`, { skip: pipelineSkip(bc) }, async () => {
    for (const [name, model] of [['fp', TINY], ['rtn w3g64', await rtnTiny(3, 64)]] as const) {
      const cpu = await evaluateZeroShot(model, base);
      const b = bc.backend();
      const live = b instanceof EmulatorBackend ? b.liveAllocations : 0;
      setCudaBackend(b);
      let f32, bf16;
      try {
        f32 = await evaluateZeroShot(model, { ...base, device: 'cuda', precision: 'f32' });
        bf16 = await evaluateZeroShot(model, { ...base, device: 'cuda' });
      } finally {
        setCudaBackend(null);
      }
      if (b instanceof EmulatorBackend) assert.equal(b.liveAllocations, live, `${name}: device allocations leaked`);
      const lls = (r: typeof cpu) => r.details!.flatMap((d) => d.lls);
      const [c, g, h] = [lls(cpu), lls(f32), lls(bf16)];
      assert.equal(g.length, c.length);
      c.forEach((x, i) => {
        assert.ok(Math.abs(g[i]! - x) <= 1e-4 + 1e-5 * Math.abs(x), `${name} f32: log-likelihood ${i}: ${g[i]} vs CPU ${x}`);
        assert.ok(Math.abs(h[i]! - x) <= 2e-2 * Math.abs(x) + 0.05, `${name} bf16: log-likelihood ${i}: ${h[i]} vs CPU ${x}`);
      });
      assert.deepEqual(f32.tasks.map((t) => t.acc), cpu.tasks.map((t) => t.acc));
    }
  });
}
