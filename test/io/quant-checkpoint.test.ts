// writeJsonAtomic (src/io/quant-checkpoint.ts): the JSON files of a checkpoint (config, index,
// records) appear whole or not at all, and a failed write names the file asked for, not its
// temporary sibling. The failure is a full disk or a read-only file system simulated by
// test/fault/fs-fault.ts in a child process, as the fault tests do.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeJsonAtomic } from '../../src/io/quant-checkpoint.js';
import { REPO } from '../golden.js';

test('writeJsonAtomic writes the file whole and leaves no temporary', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-json-'));
  try {
    writeJsonAtomic(join(dir, 'a.json'), { x: [1, 2] });
    writeJsonAtomic(join(dir, 'a.json'), { x: [3] });
    assert.deepEqual(JSON.parse(readFileSync(join(dir, 'a.json'), 'utf8')), { x: [3] });
    assert.deepEqual(readdirSync(dir), ['a.json']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('writeJsonAtomic on a full disk or a read-only file system: the error names the file asked for, nothing is left', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-json-fault-'));
  try {
    for (const code of ['ENOSPC', 'EROFS'] as const) {
      const target = join(dir, `${code}.json`);
      const script = `
        import { writeJsonAtomic } from ${JSON.stringify(join(REPO, 'dist', 'src', 'io', 'quant-checkpoint.js'))};
        try { writeJsonAtomic(${JSON.stringify(target)}, { a: 1 }); console.log('written'); }
        catch (e) { console.log(JSON.stringify({ code: e.code, path: e.path })); }`;
      const out = execFileSync(process.execPath, ['--import', join(REPO, 'dist', 'test', 'fault', 'fs-fault.js'), '--input-type=module', '-e', script], {
        encoding: 'utf8',
        env: { ...process.env, EQAT_TEST_FS_FAULT: JSON.stringify({ code, under: dir }) },
      });
      assert.deepEqual(JSON.parse(out), { code, path: target }, code);
    }
    assert.deepEqual(readdirSync(dir), [], 'no file and no temporary left');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
