// Optional conformance: round-to-nearest (`block-ap --epochs 0`, min-max init) of
// ../shared/models/llama-small at the three configurations of the Block-AP acceptance,
// evaluated at seqlen 512 on test-mix.txt from the written checkpoint (f16 step sizes, as
// GPTQ stores them), within 0.1% of PyTorch's f32 fake-quantized perplexity.
// Skips when ../shared is absent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readGolden, sharedModel, SHARED, writeRtn } from '../golden.js';
import { evaluatePerplexity } from '../../src/pipeline/eval.js';

const dir = sharedModel('llama-small');
const data = join(SHARED, 'data', 'test-mix.txt');
const skip = dir && existsSync(data) ? false : '../shared/models/llama-small or data not present';
const ACCEPTANCE = ['w2g64', 'w3g128', 'w4g128'];
const configs = dir ? Object.entries(readGolden(dir).rtn_ppl_fp32_seq512_test_mix).filter(([k]) => ACCEPTANCE.includes(k)) : [];

for (const [name, want] of configs) {
  test(`llama-small RTN ${name}: ppl within 0.1% of PyTorch`, { skip }, async () => {
    const m = /^w(\d+)g(\d+)$/.exec(name)!;
    const bits = Number(m[1]);
    const work = mkdtempSync(join(tmpdir(), 'eqat-rtn-'));
    const out = join(work, name);
    await writeRtn(dir!, out, bits, Number(m[2]));
    const r = await evaluatePerplexity(out, data, { seqlen: 512, quiet: true });
    rmSync(work, { recursive: true, force: true });
    const rel = Math.abs(r.ppl - want) / want;
    assert.ok(rel <= 1e-3, `ppl ${r.ppl} vs golden ${want} (rel ${rel})`);
  });
}
if (!dir) test('llama-small RTN conformance', { skip }, () => {});
