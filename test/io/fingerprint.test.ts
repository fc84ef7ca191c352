// Input identity by content (src/io/fingerprint.ts): a data file is its bytes (not its path,
// size or time), a model directory is each read file's size and hash (sampled above
// FULL_HASH_BYTES, the header and both ends always in), and a difference is named in words.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, mkdirSync, mkdtempSync, openSync, rmSync, statSync, utimesSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dataIdentity, FULL_HASH_BYTES, inputDifference, inputIdentity, modelIdentity } from '../../src/io/fingerprint.js';

const dir = mkdtempSync(join(tmpdir(), 'eqat-fingerprint-'));
test.after(() => rmSync(dir, { recursive: true, force: true }));

/** Rewrites `path` with `text`, keeping its modification time. */
function rewriteKeepingTime(path: string, text: string): void {
  const { atime, mtime } = statSync(path);
  writeFileSync(path, text);
  utimesSync(path, atime, mtime);
}

test('data: the same bytes are the same data whatever the time; other bytes of the same size are not', () => {
  const f = join(dir, 'calib.txt');
  writeFileSync(f, 'first corpus\n\nsecond document\n');
  const a = dataIdentity(f);
  const later = new Date(statSync(f).mtimeMs + 60_000);
  utimesSync(f, later, later);
  assert.deepEqual(dataIdentity(f), a, 'touching the file changes nothing');
  rewriteKeepingTime(f, 'FIRST corpus\n\nsecond document\n');
  const b = dataIdentity(f);
  assert.equal(b.bytes, a.bytes);
  assert.notEqual(b.sha256, a.sha256);
  assert.throws(() => dataIdentity(join(dir, 'absent.txt')), /absent\.txt: cannot read it to identify its contents \(ENOENT/);
});

test('model: every read file by content; records, logs and temporaries are not inputs', () => {
  const m = join(dir, 'model');
  mkdirSync(m);
  writeFileSync(join(m, 'config.json'), '{"a":1}');
  writeFileSync(join(m, 'model.safetensors'), 'weights');
  for (const f of ['eqat-recipe.json', 'recipe.json', 'block-ap-log.jsonl', 'README.md', '.hidden', 'x.json.tmp']) writeFileSync(join(m, f), 'x');
  const a = modelIdentity(m);
  assert.deepEqual(Object.keys(a.files), ['config.json', 'model.safetensors']);
  assert.match(a.files['model.safetensors']!, /^7 bytes, sha256 [0-9a-f]{64}$/);
  writeFileSync(join(m, 'eqat-recipe.json'), 'another record');
  assert.deepEqual(modelIdentity(m), a);
});

test('model: a file above FULL_HASH_BYTES is sampled: header, samples and tail each change it', () => {
  const m = join(dir, 'big');
  mkdirSync(m);
  const path = join(m, 'model.safetensors');
  const size = FULL_HASH_BYTES + 3 * 2 ** 20;
  const header = Buffer.from('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}');
  const fd = openSync(path, 'w');
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(header.length));
  writeSync(fd, len, 0, 8, 0);
  writeSync(fd, header, 0, header.length, 8);
  writeSync(fd, Buffer.from([0]), 0, 1, size - 1); // sparse: the rest reads as zeros
  closeSync(fd);
  const base = modelIdentity(m).files['model.safetensors']!;
  assert.match(base, new RegExp(`^${size} bytes, sampled sha256 [0-9a-f]{64}$`));
  for (const at of [8 + 5, size - 1, Math.floor((size - 65536) / 2)]) {
    const f = openSync(path, 'r+');
    writeSync(f, Buffer.from([0x5a]), 0, 1, at);
    assert.notEqual(modelIdentity(m).files['model.safetensors'], base, `a byte changed at ${at}`);
    writeSync(f, Buffer.from([at === 8 + 5 ? header[5]! : 0]), 0, 1, at);
    closeSync(f);
    assert.equal(modelIdentity(m).files['model.safetensors'], base, `restored at ${at}`);
  }
});

test('inputDifference names the input that differs and how', () => {
  const m = join(dir, 'model');
  const calib = join(dir, 'calib.txt');
  const saved = JSON.parse(JSON.stringify(inputIdentity(m, calib))) as unknown;
  assert.equal(inputDifference(saved, inputIdentity(m, calib), 'the calibration data', 'in the saved state'), null);
  const other = join(dir, 'other.txt');
  writeFileSync(other, 'x');
  assert.match(inputDifference(saved, inputIdentity(m, other), 'the calibration data', 'in the saved state')!, /^the calibration data is ".*calib\.txt" in the saved state, ".*other\.txt" now$/);
  assert.match(inputDifference(saved, inputIdentity(m, null), 'the calibration data', 'in the saved state')!, /^the calibration data is ".*calib\.txt" in the saved state, none now$/);
  rewriteKeepingTime(calib, 'a different corpus of another length');
  assert.match(
    inputDifference(saved, inputIdentity(m, calib), 'the calibration data', 'in the saved state')!,
    /^the calibration data .*calib\.txt has changed \(\d+ bytes, sha256 [0-9a-f]{12}… in the saved state; 36 bytes, sha256 [0-9a-f]{12}… now\)$/,
  );
  const savedNow = JSON.parse(JSON.stringify(inputIdentity(m, calib))) as unknown;
  rewriteKeepingTime(join(m, 'model.safetensors'), 'WEIGHTS');
  assert.match(inputDifference(savedNow, inputIdentity(m, calib), 'the calibration data', 'when it was made')!, /^the model file .*model\/model\.safetensors has changed \(7 bytes, sha256 [0-9a-f]{12}… when it was made, 7 bytes, sha256 [0-9a-f]{12}… now\)$/);
  writeFileSync(join(m, 'extra.json'), '{}');
  assert.match(inputDifference(savedNow, inputIdentity(m, calib), 'd', 'then')!, /model\/(extra\.json has changed \(absent then|model\.safetensors)/);
  assert.equal(inputDifference(undefined, inputIdentity(m, calib), 'd', 'in the saved state'), 'no fingerprint of the model and data is recorded in the saved state');
});
