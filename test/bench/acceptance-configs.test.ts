// bench/block-ap and bench/e2e-qp: a config name they do not know is refused, naming it, before
// any run starts (and before the check for ../shared, so this holds without it).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { REPO } from '../golden.js';

const bench = (name: string, args: string[]) =>
  spawnSync(process.execPath, [join(REPO, 'dist', 'bench', `${name}.js`), ...args], { encoding: 'utf8' });

test('bench/block-ap: an unknown config or a malformed seed suffix is refused before any run', () => {
  for (const bad of ['w9g1', 'w2g64-seedX', 'w2g64-seed']) {
    const r = bench('block-ap', ['w2g64-seed3', bad]);
    assert.notEqual(r.status, 0, bad);
    assert.match(r.stderr, new RegExp(`unknown config ${bad} \\(expected one of rtn-w2g64, .*optionally with -seedN\\)`));
    assert.doesNotMatch(r.stdout, /# Block-AP on llama-small/);
  }
});

test('bench/e2e-qp: an unknown config is refused before any run', () => {
  const r = bench('e2e-qp', ['--from', '/nonexistent', '--warmup-ratio', '0', 'w2g64-seed3', 'w5g32']);
  assert.notEqual(r.status, 0);
  assert.match(r.stderr, /unknown config w5g32 \(expected w2g64, w3g128 or w4g128/);
  assert.doesNotMatch(r.stdout, /# E2E-QP on llama-small/);
});
