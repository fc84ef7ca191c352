// Optional conformance: every golden.json check for the models in ../shared (llama-tiny,
// llama-small), including perplexity at seqlen 512 on test-mix and wikitext2 within 0.1%.
// Skips when ../shared is absent.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { checkForward, checkGreedy, checkTokenizer, loadModel, readGolden, sharedModel, SHARED } from '../golden.js';
import { evaluatePerplexity } from '../../src/pipeline/eval.js';

const DATA: Record<string, string> = { 'test-mix': 'test-mix.txt', 'wikitext2-test': 'wikitext2-test.txt' };

for (const name of ['llama-tiny', 'llama-small']) {
  const dir = sharedModel(name);
  const skip = dir ? false : `../shared/models/${name} not present`;
  test(`${name}: tokenizer, logits, cross-entropy, greedy`, { skip }, () => {
    const golden = readGolden(dir!);
    checkTokenizer(dir!, golden);
    const model = loadModel(dir!);
    checkForward(model, golden);
    checkGreedy(model, golden);
  });
  for (const [key, file] of Object.entries(DATA)) {
    const path = join(SHARED, 'data', file);
    test(`${name}: ppl at seqlen 512 on ${file} within 0.1% of PyTorch`, { skip: skip || (!existsSync(path) && 'no data') }, async () => {
      const golden = readGolden(dir!);
      const want = golden.ppl_fp32_seq512[key]!;
      const r = await evaluatePerplexity(dir!, path, { seqlen: 512, batch: 4, quiet: true });
      const rel = Math.abs(r.ppl - want) / want;
      assert.ok(rel <= 1e-3, `ppl ${r.ppl} vs golden ${want} (rel ${rel})`);
    });
  }
}
