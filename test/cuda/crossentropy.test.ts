// Softmax cross-entropy and token embedding on CUDA (src/ops/cuda/crossentropy.ts,
// src/ops/cuda/embedding.ts) against the CPU twins (src/ops/ref/crossentropy.ts,
// src/ops/ref/embedding.ts) on every backend of backends.ts (GPU when present, the CPU emulator
// of the kernel sources). Cross-entropy: the CPU tests' tolerances (f64 sums in another order),
// odd vocabulary sizes, ignored rows, extreme and -inf logits, the overwriting backward in and
// out of place, the fused op, and the out-of-range target error. Embedding: bit for bit,
// repeated ids, accumulation, the id error. Argument errors.
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { deviceView as viewOf, downloadDevice, uploadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { IGNORE_INDEX } from '../../src/ops/crossentropy.js';
import { crossEntropyBackwardRef, crossEntropyForwardRef } from '../../src/ops/ref/crossentropy.js';
import { embeddingBackwardRef, embeddingForwardRef } from '../../src/ops/ref/embedding.js';
import {
  crossEntropyBackwardCuda,
  crossEntropyForwardBackwardCuda,
  allocLossScale,
  writeLossScale,
  crossEntropyForwardCuda,
} from '../../src/ops/cuda/crossentropy.js';
import { embeddingBackwardCuda, embeddingForwardCuda } from '../../src/ops/cuda/embedding.js';
import { firstBadIndexCuda } from '../../src/ops/cuda/indices.js';
import { assertClose, ODD_SIZES, randn } from '../util.js';
import { assertBitExact, testOnBackends, type Scope } from './backends.js';

const host = (a: DeviceArray): Float32Array => downloadDevice<Float32Array>(a);

function randomTargets(rng: Rng, N: number, V: number, ignoreEvery = 0): Tensor {
  const t = Tensor.zeros([N], 'i32');
  for (let r = 0; r < N; r++) t.i32[r] = ignoreEvery > 0 && r % ignoreEvery === 1 ? IGNORE_INDEX : rng.int(0, V);
  return t;
}

/** Forward, backward (out of place over garbage, and in place) and fused, against the twin. */
function compareCrossEntropy(s: Scope, logits: Tensor, targets: Tensor, scale: number, what: string): void {
  const N = targets.size, V = logits.dim(-1);
  const losses = Tensor.zeros([N]), d = Tensor.zeros([N, V]);
  crossEntropyForwardRef(losses, logits, targets);
  crossEntropyBackwardRef(d, logits, targets, scale);
  const lossTol = { atol: 2e-6, rtol: 2e-6 }, gradTol = { atol: 1e-7 * Math.abs(scale), rtol: 1e-5 };

  const gx = s.upload(logits.f32), gt = s.upload(targets.i32), gl = s.upload(new Float32Array(N).fill(9));
  crossEntropyForwardCuda(gl, gx, gt, N, V);
  assertClose(host(gl), losses.f32, { ...lossTol, what: `${what} losses` });
  const gd = s.upload(new Float32Array(N * V).fill(123)); // must be overwritten
  crossEntropyBackwardCuda(gd, gx, gt, N, V, scale);
  const outOfPlace = host(gd);
  assertClose(outOfPlace, d.f32, { ...gradTol, what: `${what} dlogits` });

  const gl2 = s.upload(new Float32Array(N).fill(5)), gd2 = s.upload(new Float32Array(N * V).fill(5));
  const gs = s.adopt(allocLossScale());
  writeLossScale(gs, scale);
  crossEntropyForwardBackwardCuda(gl2, gd2, gx, gt, N, V, gs);
  assertBitExact(host(gl2), host(gl), `${what} fused losses = forward losses`);
  assertBitExact(host(gd2), outOfPlace, `${what} fused dlogits = backward dlogits`);

  const inPlace = s.upload(logits.f32);
  crossEntropyBackwardCuda(inPlace, inPlace, gt, N, V, scale);
  assertBitExact(host(inPlace), outOfPlace, `${what} in-place dlogits`);
  const inPlaceFused = s.upload(logits.f32), gl3 = s.alloc('f32', N);
  crossEntropyForwardBackwardCuda(gl3, inPlaceFused, inPlaceFused, gt, N, V, gs);
  assertBitExact(host(gl3), host(gl), `${what} in-place fused losses`);
  assertBitExact(host(inPlaceFused), outOfPlace, `${what} in-place fused dlogits`);
}

testOnBackends('cross-entropy forward, backward and fused match the twin on odd shapes', (s) => {
  const rng = new Rng(51);
  for (const N of [1, 3, 17]) {
    for (const V of [...ODD_SIZES, 1000, 4101]) {
      compareCrossEntropy(s, randn(rng, [N, V], 3), randomTargets(rng, N, V, N > 1 ? 3 : 0), 1 / N, `N=${N} V=${V}`);
    }
  }
  const N = 5, V = 32_003; // rows longer than a block, many block-strided passes
  compareCrossEntropy(s, randn(rng, [N, V], 4), randomTargets(rng, N, V, 2), 1 / 17, `N=${N} V=${V}`);
});

testOnBackends('cross-entropy: extreme, masked (-inf) and uniform logits, all rows ignored', (s) => {
  const rng = new Rng(52);
  const N = 6, V = 1001;
  const logits = randn(rng, [N, V], 1);
  const x = logits.f32;
  for (let i = 0; i < V; i++) x[0 * V + i] = x[0 * V + i]! * 1e4;
  for (let i = 0; i < V; i++) x[1 * V + i] = x[1 * V + i]! + 5e3;
  for (let i = 0; i < V; i += 2) x[2 * V + i] = -Infinity;
  for (let i = 0; i < V; i++) x[3 * V + i] = 0;
  x[4 * V + 7] = 1e5;
  const targets = Tensor.fromI32(new Int32Array([3, 500, 1, 7, 7, 0]));
  compareCrossEntropy(s, logits, targets, 1, 'extreme');
  const gl = s.alloc('f32', N);
  crossEntropyForwardCuda(gl, s.upload(x), s.upload(targets.i32), N, V);
  const l = host(gl);
  assertClose([l[3]!], [Math.log(V)], { atol: 1e-6, rtol: 1e-6, what: 'uniform row loss = log V' });
  assert.equal(l[4], 0, 'a dominant correct logit gives loss 0');
  const all = s.upload(new Int32Array(N).fill(IGNORE_INDEX)), gd = s.upload(new Float32Array(N * V).fill(7));
  const one = s.adopt(allocLossScale());
  writeLossScale(one, 1);
  crossEntropyForwardBackwardCuda(gl, gd, s.upload(x), all, N, V, one);
  assert.deepEqual([...host(gl)], new Array(N).fill(0));
  assert.ok(host(gd).every((g) => Object.is(g, 0)), 'ignored rows get +0 gradients');
});

testOnBackends('cross-entropy: a bad target throws naming the row before anything is written; check: false gives NaN rows', (s) => {
  const rng = new Rng(53);
  const N = 4, V = 17;
  const gx = s.upload(randn(rng, [N, V]).f32);
  const one = s.adopt(allocLossScale());
  writeLossScale(one, 1);
  for (const bad of [V, -1, 1 << 30, -101]) {
    const gt = s.upload(new Int32Array([0, IGNORE_INDEX, bad, 3]));
    const gl = s.upload(new Float32Array(N).fill(7)), gd = s.upload(new Float32Array(N * V).fill(7));
    const message = (op: string) => (e: Error) =>
      e instanceof RangeError && e.message === `${op}: argument 'targets': row 2 has target ${bad}, outside [0, ${V}) and not the ignore index -100`;
    assert.throws(() => crossEntropyForwardCuda(gl, gx, gt, N, V), message('crossEntropyForwardCuda'));
    assert.throws(() => crossEntropyBackwardCuda(gd, gx, gt, N, V, 1), message('crossEntropyBackwardCuda'));
    assert.throws(() => crossEntropyForwardBackwardCuda(gl, gd, gx, gt, N, V, one), message('crossEntropyForwardBackwardCuda'));
    assert.deepEqual([...host(gl)], [7, 7, 7, 7], 'losses untouched');
    assert.ok(host(gd).every((v) => v === 7), 'dlogits untouched');
    crossEntropyForwardBackwardCuda(gl, gd, gx, gt, N, V, one, { check: false });
    const l = host(gl), d = host(gd);
    assert.ok(Number.isNaN(l[2]) && Number.isFinite(l[0]) && l[1] === 0 && Number.isFinite(l[3]), `unchecked losses ${[...l]}`);
    assert.ok(d.subarray(2 * V, 3 * V).every(Number.isNaN) && d.subarray(0, 2 * V).every(Number.isFinite), 'unchecked gradient rows');
  }
  // the search finds the first bad row among many, across the block's threads
  const ids = new Int32Array(5000).fill(1);
  ids[4321] = -5;
  ids[777] = 99;
  ids[777 + 3 * 256] = 98; // a later bad id searched by the same thread
  const gids = s.upload(ids);
  assert.deepEqual(firstBadIndexCuda(gids, ids.length, 50), { row: 777, value: 99 });
  assert.deepEqual(firstBadIndexCuda(gids, 777, 50), null);
  assert.deepEqual(firstBadIndexCuda(gids, ids.length, 100), { row: 4321, value: -5 });
  assert.deepEqual(firstBadIndexCuda(gids, ids.length, 100, -5), null);
});

testOnBackends('cross-entropy wrapper: argument errors name the op and argument', (s) => {
  const x = s.alloc('f32', 12), t = s.alloc('i32', 3), l = s.alloc('f32', 3);
  uploadDevice(t, new Int32Array(3));
  assert.throws(() => crossEntropyForwardCuda(l, x, t, 3, 5), /crossEntropyForwardCuda: argument 'logits': expected 15 elements/);
  assert.throws(() => crossEntropyForwardCuda(l, x, s.alloc('f32', 3), 3, 4), /argument 'targets': expected a i32 device array/);
  assert.throws(() => crossEntropyForwardCuda(s.alloc('f32', 2), x, t, 3, 4), /crossEntropyForwardCuda: argument 'losses': expected 3 elements/);
  assert.throws(() => crossEntropyBackwardCuda(s.alloc('f32', 12), x, t, 3, 4, '1' as unknown as number), /argument 'scale' must be a number/);
  const big = s.alloc('f32', 24);
  assert.throws(() => crossEntropyBackwardCuda(viewOf(big, 2, 12), viewOf(big, 0, 12), t, 3, 4, 1), /'dlogits' overlaps 'logits' in part/);
  const scale = s.adopt(allocLossScale());
  assert.throws(() => crossEntropyForwardBackwardCuda(l, l as never, x, t, 3, 4, scale), /argument 'dlogits': expected 12 elements/);
  assert.throws(() => crossEntropyForwardBackwardCuda(l, x, x, t, 3, 4, s.alloc('u8', 4)), /crossEntropyForwardBackwardCuda: argument 'scale': expected 8 elements/);
  assert.throws(() => writeLossScale(scale, NaN), /writeLossScale: scale must be a finite number, got NaN/);
});

testOnBackends('embedding forward and accumulating backward match the twins bit for bit', (s) => {
  const rng = new Rng(54);
  for (const [N, V, C] of [[1, 1, 1], [7, 3, 17], [33, 65, 7], [65, 17, 300], [5, 1000, 64]] as const) {
    const what = `N=${N} V=${V} C=${C}`;
    const table = randn(rng, [V, C]);
    const ids = Tensor.zeros([N], 'i32');
    for (let n = 0; n < N; n++) ids.i32[n] = n % 4 === 3 ? ids.i32[n - 1]! : rng.int(0, V); // repeated ids
    const out = Tensor.zeros([N, C]);
    embeddingForwardRef(out, ids, table);
    const gt = s.upload(table.f32), gi = s.upload(ids.i32), go = s.alloc('f32', N * C);
    embeddingForwardCuda(go, gi, gt, N, V, C);
    assertBitExact(host(go), out.f32, `${what} forward`);
    const dout = randn(rng, [N, C]), dtable = randn(rng, [V, C]);
    const gdt = s.upload(dtable.f32);
    embeddingBackwardRef(dtable, dout, ids);
    embeddingBackwardCuda(gdt, s.upload(dout.f32), gi, N, V, C);
    assertBitExact(host(gdt), dtable.f32, `${what} backward (accumulated)`);
  }
});

testOnBackends('embedding: an id outside [0, V) throws naming the row, nothing written; argument errors', (s) => {
  const N = 4, V = 5, C = 3;
  const table = s.upload(new Float32Array(V * C).fill(1)), dout = s.upload(new Float32Array(N * C).fill(1));
  for (const bad of [V, -1, IGNORE_INDEX]) {
    const ids = s.upload(new Int32Array([0, 4, 2, bad]));
    const out = s.upload(new Float32Array(N * C).fill(7)), dt = s.upload(new Float32Array(V * C).fill(7));
    assert.throws(
      () => embeddingForwardCuda(out, ids, table, N, V, C),
      (e: Error) => e instanceof RangeError && e.message === `embeddingForwardCuda: argument 'ids': id ${bad} at row 3 is outside [0, ${V})`,
    );
    assert.throws(() => embeddingBackwardCuda(dt, dout, ids, N, V, C), /embeddingBackwardCuda: argument 'ids': id .* at row 3/);
    assert.ok(host(out).every((v) => v === 7) && host(dt).every((v) => v === 7), 'nothing written');
    embeddingForwardCuda(out, ids, table, N, V, C, { check: false });
    const o = host(out);
    assert.ok(o.subarray(0, 3 * C).every((v) => v === 1) && o.subarray(3 * C).every(Number.isNaN), 'unchecked: NaN row');
    embeddingBackwardCuda(dt, dout, ids, N, V, C, { check: false });
    assert.equal(host(dt).reduce((a, v) => a + v, 0), 7 * V * C + 3 * C, 'unchecked: the bad row is skipped');
  }
  const ids = s.upload(new Int32Array(N)), out = s.alloc('f32', N * C);
  assert.throws(() => embeddingForwardCuda(out, ids, table, N, V, 4), /embeddingForwardCuda: out: expected 16 elements/);
  assert.throws(() => embeddingForwardCuda(out, s.alloc('f32', N), table, N, V, C), /embeddingForwardCuda: ids: expected a i32 device array/);
  assert.throws(() => embeddingForwardCuda(viewOf(table, 0, N * C), ids, table, N, V, C), /embeddingForwardCuda: out overlaps table/);
  assert.throws(() => embeddingBackwardCuda(table, viewOf(table, 0, N * C), ids, N, V, C), /embeddingBackwardCuda: dtable overlaps dout/);
});
