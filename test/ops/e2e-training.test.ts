// The backend's E2E-QP training section, one spec on every backend (test/ops/spec.ts): the
// host check of a micro-batch's ids and targets (every id first, then the targets; each
// backend's op names in the messages), the fused cross-entropy reading its gradient scale from
// the backend's record (rewritten between calls, in place, against the twin at the CPU op
// tests' tolerances). (The sum of squares and scaling: test/ops/reduce.test.ts.)
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { IGNORE_INDEX } from '../../src/ops/crossentropy.js';
import { crossEntropyForwardBackwardRef } from '../../src/ops/ref/crossentropy.js';
import { assertClose, randn } from '../util.js';
import { forEachBackend, type OnBackend } from './spec.js';

const opNames = (b: OnBackend): { embedding: string; crossEntropy: string } =>
  b.name === 'cpu'
    ? { embedding: 'embeddingForward', crossEntropy: 'crossEntropyForwardBackward' }
    : { embedding: 'embeddingForwardCuda', crossEntropy: 'crossEntropyForwardBackwardCuda' };

forEachBackend('checkTrainingTokens refuses the first bad id, then the first bad target, with the op\'s error', (b) => {
  const V = 11;
  const { embedding, crossEntropy } = opNames(b);
  const ids = Int32Array.from([1, 2, 3, 4, 5]), targets = Int32Array.from([2, 3, IGNORE_INDEX, 5, 0]);
  b.be.checkTrainingTokens(ids, targets, V); // valid, -100 included
  ids[3] = V;
  targets[1] = -1; // an earlier bad target: the ids are checked first
  assert.throws(() => b.be.checkTrainingTokens(ids, targets, V), new RegExp(`^RangeError: ${embedding}: argument 'ids': id ${V} at row 3 is outside \\[0, ${V}\\)$`));
  ids[3] = 4;
  assert.throws(
    () => b.be.checkTrainingTokens(ids, targets, V),
    new RegExp(`^RangeError: ${crossEntropy}: argument 'targets': row 1 has target -1, outside \\[0, ${V}\\) and not the ignore index -100$`),
  );
  assert.throws(() => b.be.checkTrainingTokens(ids, targets.subarray(1), V), /checkTrainingTokens: 5 ids but 4 targets/);
});

forEachBackend('crossEntropyForwardBackward takes its gradient scale from the record, in place, as the twin', (b) => {
  const rng = new Rng(3);
  const record = b.be.lossScale();
  try {
    for (const [N, V, scale] of [[1, 1, 1], [5, 33, 0.25], [17, 130, 1 / 37], [3, 7, 0]] as const) {
      const logits = randn(rng, [N, V], 3);
      const targets = Tensor.zeros([N], 'i32');
      for (let r = 0; r < N; r++) targets.i32[r] = r % 3 === 1 ? IGNORE_INDEX : rng.int(0, V);
      const lossesRef = Tensor.zeros([N]), dRef = Tensor.zeros([N, V]);
      crossEntropyForwardBackwardRef(lossesRef, dRef, logits, targets, scale);
      b.be.writeLossScale(record.value, scale);
      const glogits = b.upload(logits.f32), losses = b.alloc('f32', N);
      b.be.crossEntropyForwardBackward(losses, glogits, glogits, b.upload(targets.i32), N, V, record.value, { check: true });
      assertClose(b.download(losses), lossesRef.f32, { atol: 2e-6, rtol: 2e-6, what: `losses N=${N} V=${V}` });
      assertClose(b.download(glogits), dRef.f32, { atol: 1e-7 * Math.abs(scale), rtol: 1e-5, what: `dlogits N=${N} V=${V} scale ${scale}` });
    }
    assert.throws(() => b.be.writeLossScale(record.value, NaN), /writeLossScale: scale must be a finite number, got NaN/);
  } finally {
    record.free();
  }
});
