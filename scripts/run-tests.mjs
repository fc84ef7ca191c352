// Runs the compiled test files under dist/test with Node's built-in test runner, by tier:
//   (default)    every file but test/conformance/; whole pipelines on the CUDA emulator skip
//   --tier full  every file, every test (whole pipelines on the emulator, conformance runs
//                against ../shared, llama.cpp and onnxruntime; those skip cleanly without them)
//   --tier gpu   the op specs (test/ops, test/quant: every backend) and the CUDA tests (test/cuda) with
//                the emulator left out (EQAT_TEST_EMULATOR=0), for a machine with a GPU
// Further arguments keep the files whose path contains one of them.
// The tier reaches the tests as EQAT_TEST_TIER (test/tier.ts).
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';

const TIERS = ['default', 'full', 'gpu'];

function collect(dir) {
  const out = [];
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name);
    if (statSync(p).isDirectory()) out.push(...collect(p));
    else if (name.endsWith('.test.js')) out.push(p);
  }
  return out;
}

const args = process.argv.slice(2);
let tier = 'default';
const t = args.indexOf('--tier');
if (t >= 0) {
  tier = args[t + 1];
  args.splice(t, 2);
  if (!TIERS.includes(tier)) {
    console.error(`run-tests: --tier must be one of ${TIERS.join(', ')}, got ${tier === undefined ? 'nothing' : `'${tier}'`}`);
    process.exit(2);
  }
}
let files = collect('dist/test');
if (tier === 'default') files = files.filter((f) => !f.startsWith(join('dist', 'test', 'conformance')));
if (tier === 'gpu') files = files.filter((f) => ['cuda', 'ops', 'quant'].some((d) => f.startsWith(join('dist', 'test', d))));
if (args.length) {
  files = files.filter((f) => args.some((x) => f.includes(x)));
  if (files.length === 0) {
    console.error(`run-tests: no test file in tier '${tier}' matches ${args.map((a) => `'${a}'`).join(', ')}`);
    process.exit(2);
  }
}
const env = { ...process.env, EQAT_TEST_TIER: tier };
if (tier === 'gpu') env['EQAT_TEST_EMULATOR'] = '0';
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { stdio: 'inherit', env });
process.exit(r.status ?? 1);
