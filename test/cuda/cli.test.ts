// The --device flag of the pipeline commands: `cuda` fails before anything is read or written,
// with the probe's reason when CUDA is unavailable (here, and with EQAT_CUDA_DISABLE=1); `auto`
// falls back to the CPU; unknown values are usage errors. (The CUDA runs themselves:
// block-ap.test.ts, eval.test.ts, e2e-qp.test.ts, generate.test.ts.)
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { packageRoot } from '../../src/engine/native.js';
import { probeCuda } from '../../src/engine/cuda.js';

const root = packageRoot();
const main = join(root, 'dist', 'src', 'cli', 'main.js');
const tiny = join(root, 'fixtures', 'llama-tiny');

function eqat(args: string[], env: Record<string, string> = {}): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [main, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, cwd: root });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const probe = probeCuda();

test('--device cuda without CUDA fails clearly, exits non-zero and writes nothing', { skip: probe.available && 'CUDA is available here' }, () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-cli-device-'));
  try {
    // a command that would write --out
    const out = join(dir, 'out');
    const r = eqat(['block-ap', '--model', tiny, '--wbits', '2', '--group-size', '32', '--epochs', '0', '--out', out, '--device', 'cuda']);
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, /^eqat: block-ap --device cuda: CUDA is not available: /m);
    assert.ok(r.stderr.includes(probe.reason!), `the message carries the probe's reason:\n${r.stderr}`);
    if (probe.errors.driver) assert.match(r.stderr, /libcuda\.so\.1/);
    assert.equal(r.stdout, '');
    assert.equal(existsSync(out), false, 'nothing written');
    assert.equal(existsSync(out + '.partial'), false, 'nothing written');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('every pipeline command checks --device cuda first (EQAT_CUDA_DISABLE=1)', () => {
  const env = { EQAT_CUDA_DISABLE: '1' };
  const commands: [string, string[]][] = [
    ['eval', ['--model', 'missing-dir', '--data', 'missing.txt']],
    ['generate', ['--model', 'missing-dir', '--prompt', 'hi']],
    ['block-ap', ['--model', 'missing-dir', '--wbits', '2', '--out', 'never-written']],
    ['e2e-qp', ['--model', 'missing-dir', '--data', 'missing.txt', '--out', 'never-written']],
    ['quantize', ['--model', 'missing-dir', '--wbits', '2', '--out', 'never-written']],
  ];
  for (const [cmd, args] of commands) {
    const r = eqat([cmd, ...args, '--device', 'cuda'], env);
    assert.equal(r.status, 1, `${cmd}: ${r.stderr}`);
    assert.equal(r.stderr.trim(), `eqat: ${cmd} --device cuda: CUDA is not available: CUDA disabled by EQAT_CUDA_DISABLE=1`);
  }
  assert.equal(existsSync(join(root, 'never-written')), false);
});

test('--device rejects unknown values and --help documents it with its default', () => {
  const bad = eqat(['eval', '--model', 'x', '--data', 'y', '--device', 'gpu']);
  assert.equal(bad.status, 2);
  assert.match(bad.stderr, /eqat eval: --device must be one of cpu, cuda, auto, got 'gpu'/);
  const help = eqat(['block-ap', '--help']);
  assert.equal(help.status, 0);
  assert.match(help.stdout, /--device <str>\s+compute device; auto = CUDA when present \[cpu\|cuda\|auto\] \(default: cpu\)/);
});

test('--device auto runs on the CPU without CUDA', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-cli-device-'));
  try {
    const out = join(dir, 'rtn');
    const r = eqat(['block-ap', '--model', tiny, '--wbits', '4', '--group-size', '32', '--epochs', '0', '--out', out, '--quiet', '--device', 'auto', '--threads', '1'], { EQAT_CUDA_DISABLE: '1' });
    assert.equal(r.status, 0, r.stderr);
    assert.ok(existsSync(join(out, 'config.json')));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('generate --precision bf16 without --device cuda is refused before any output, as a usage error', () => {
  const r = eqat(['generate', '--model', tiny, '--prompt', 'hi', '--precision', 'bf16']);
  assert.equal(r.status, 2, r.stderr);
  assert.equal(r.stderr.trim(), 'eqat generate: --precision: bf16 needs --device cuda (the CPU computes in f32)');
  assert.equal(r.stdout, '');
});
