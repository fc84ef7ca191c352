// Perplexity on CUDA (eval --device cuda: src/model/model.ts resident on the CUDA backend) against the CPU evaluation
// of the same windows, for the full-precision llama-tiny and a quantized (packed) one, in f32
// and bf16 GEMMs, with a batch that leaves a tail, on the backends of backends.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setCudaBackend } from '../../src/engine/cuda.js';
import { evaluatePerplexity, type EvalOptions } from '../../src/pipeline/eval.js';
import { REPO, rtnTiny, TINY } from '../golden.js';
import { backendCases } from './backends.js';
import { EmulatorBackend } from './emu/backend.js';
import { pipelineSkip } from '../tier.js';

process.env['EQAT_CACHE_DIR'] ??= mkdtempSync(join(tmpdir(), 'eqat-cache-'));
const DATA = join(REPO, 'fixtures', 'text', 'eval-sample.txt');

// RTN w3g64: 3-bit exercises the GPTQ 96-bit packing units on the device
const quantizedTiny = (): Promise<string> => rtnTiny(3, 64);

const base: EvalOptions = { seqlen: 32, batch: 2, maxWindows: 5, quiet: true };

for (const bc of backendCases()) {
  test(`cuda eval --device cuda matches the CPU perplexity, full precision and packed [${bc.name}]`, { skip: pipelineSkip(bc) }, async () => {
    const models = [['fp', TINY], ['rtn w3g64', await quantizedTiny()]] as const;
    for (const [name, model] of models) {
      const cpu = await evaluatePerplexity(model, DATA, base);
      const b = bc.backend();
      const live = b instanceof EmulatorBackend ? b.liveAllocations : 0;
      setCudaBackend(b);
      let f32, bf16;
      try {
        f32 = await evaluatePerplexity(model, DATA, { ...base, device: 'cuda', precision: 'f32' });
        bf16 = await evaluatePerplexity(model, DATA, { ...base, device: 'cuda' });
      } finally {
        setCudaBackend(null);
      }
      if (b instanceof EmulatorBackend) assert.equal(b.liveAllocations, live, `${name}: device allocations leaked`);
      assert.equal(f32.windows, 5);
      assert.equal(f32.predictions, cpu.predictions);
      assert.ok(Math.abs(f32.nll - cpu.nll) <= 1e-5 * cpu.nll, `${name} f32: nll ${f32.nll} vs CPU ${cpu.nll}`);
      assert.ok(Math.abs(bf16.nll - cpu.nll) <= 1e-2 * cpu.nll, `${name} bf16: nll ${bf16.nll} vs CPU ${cpu.nll}`);
      assert.notEqual(bf16.nll, f32.nll, `${name}: bf16 GEMMs round differently from f32`);
    }
  });
}

test('eval --precision bf16 without --device cuda is refused', async () => {
  await assert.rejects(evaluatePerplexity(TINY, DATA, { ...base, precision: 'bf16' }), /--precision: bf16 needs --device cuda/);
});
