// The native thread pool: changing the thread count after parallel work has run is safe and
// does not change results of an order-independent kernel.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { native } from '../../src/engine/native.js';
import { toF32 } from '../../src/engine/dtype.js';

test('setThreads between parallel regions keeps working and gives the same results', () => {
  const src = new Uint16Array(1 << 20).map((_, i) => i & 0x7bff);
  const before = native().cpuInfo().threads;
  const a = toF32('f16', src);
  native().setThreads(1);
  const b = toF32('f16', src);
  native().setThreads(3);
  const c = toF32('f16', src);
  native().setThreads(before);
  const d = toF32('f16', src);
  assert.deepEqual(b, a);
  assert.deepEqual(c, a);
  assert.deepEqual(d, a);
  assert.equal(native().cpuInfo().threads, before);
  assert.throws(() => native().setThreads(0), /setThreads: n must be in \[1, 256\]/);
});
