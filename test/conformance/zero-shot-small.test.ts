// Full tier: the five zero-shot tasks (the fixtures of test/fixtures/tasks) on ../shared's
// llama-small, full precision and its round-to-nearest w2g64 checkpoint (packed), with every
// doc's log-likelihoods checked against the sequence scored alone (test/pipeline/zero-shot-check.ts);
// the tables go to the test output (bench/RESULTS.md records them). Skips without ../shared.
import { test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { sharedModel, REPO, writeRtn } from '../golden.js';
import { fullTierOnly } from '../tier.js';
import { parseTaskList } from '../../src/data/mc-tasks.js';
import { evaluateZeroShot, formatZeroShot } from '../../src/pipeline/zero-shot.js';
import { checkEveryItem } from '../pipeline/zero-shot-check.js';

const small = sharedModel('llama-small');
const skip = fullTierOnly('zero-shot on llama-small') || (small ? false : '../shared/models/llama-small not present');

test('llama-small: the five tasks, full precision and RTN w2g64, every log-likelihood checked', { skip }, async () => {
  const work = mkdtempSync(join(tmpdir(), 'eqat-zs-small-'));
  try {
    const rtn = await writeRtn(small!, join(work, 'llama-small-w2g64-rtn'), 2, 64);
    for (const model of [small!, rtn]) {
      const r = await evaluateZeroShot(model, {
        tasks: parseTaskList('piqa,arc_easy,arc_challenge,hellaswag,winogrande', '--tasks'),
        taskData: join(REPO, 'test', 'fixtures', 'tasks'),
        quiet: true,
        details: true,
      });
      process.stdout.write(formatZeroShot(r).replace(/^/gm, `# ${model === rtn ? 'rtn w2g64' : 'fp'}: `) + '\n');
      await checkEveryItem(model, r);
    }
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
