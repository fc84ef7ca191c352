// Embedding, bit for bit with the TypeScript twin everywhere (a gather and an in-order
// scatter-add). On every backend (test/ops/spec.ts): the forward through the backend and the
// accumulating backward (the CPU op, the CUDA wrapper) with repeated ids. On CUDA also: an id
// outside [0, V) refused naming the row with nothing written (check: false gives a NaN row and
// skips it in the backward), argument errors. On the CPU ops: odd shapes, threaded backward with
// many repeated ids, accumulation, backward against finite differences, out-of-range ids and
// argument errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { embeddingBackward, embeddingForward } from '../../src/ops/embedding.js';
import { embeddingBackwardRef, embeddingForwardRef } from '../../src/ops/ref/embedding.js';
import { deviceView, downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { embeddingBackwardCuda, embeddingForwardCuda } from '../../src/ops/cuda/embedding.js';
import { IGNORE_INDEX } from '../../src/ops/crossentropy.js';
import { checkGrad, randn } from '../util.js';
import { assertBitExact } from '../cuda/backends.js';
import { forEachBackend, forEachCudaBackend } from './spec.js';

function randomIds(rng: Rng, shape: number[], V: number): Tensor {
  const ids = Tensor.zeros(shape, 'i32');
  for (let i = 0; i < ids.size; i++) ids.i32[i] = rng.int(0, V);
  return ids;
}

/** Forward and accumulating backward, native against the twin, exactly. */
function compare(rng: Rng, idShape: number[], V: number, C: number): void {
  const what = `ids [${idShape.join(', ')}] V=${V} C=${C}`;
  const ids = randomIds(rng, idShape, V);
  const table = randn(rng, [V, C]);
  const out = Tensor.zeros([...idShape, C]), outRef = Tensor.zeros([...idShape, C]);
  embeddingForward(out, ids, table);
  embeddingForwardRef(outRef, ids, table);
  assert.deepEqual(out.f32, outRef.f32, `${what}: out`);
  const dout = randn(rng, out.shape);
  const dt0 = randn(rng, [V, C]);
  const dt = dt0.clone(), dtRef = dt0.clone();
  embeddingBackward(dt, dout, ids);
  embeddingBackwardRef(dtRef, dout, ids);
  assert.deepEqual(dt.f32, dtRef.f32, `${what}: dtable`);
}

test('embedding: native matches the twin exactly on odd shapes', () => {
  const rng = new Rng(41);
  for (const N of [1, 3, 17, 65]) {
    for (const C of [1, 7, 33, 130]) compare(rng, [N], 50, C);
  }
  compare(rng, [2, 17], 9, 33); // (B, T) ids give (B, T, C) rows
});

test('embedding: threaded backward with heavily repeated ids is race-free and in row order', () => {
  const rng = new Rng(42);
  // Few table rows and many tokens: every row of the table receives ~40-100 updates, and the
  // column blocks are split across threads. Exact equality with the twin shows that each
  // element was accumulated once per token, in token order.
  for (let rep = 0; rep < 3; rep++) compare(rng, [300], 7, 130);
  compare(rng, [4, 129], 3, 1031);
  compare(rng, [2000], 11, 17);
});

test('embedding: backward accumulates into a pre-filled table gradient', () => {
  const rng = new Rng(43);
  const ids = Tensor.fromI32(new Int32Array([2, 0, 2, 2]));
  const dout = randn(rng, [4, 5]);
  const dt = Tensor.zeros([3, 5]);
  dt.f32.fill(1);
  embeddingBackward(dt, dout, ids);
  const d = dout.f32;
  for (let c = 0; c < 5; c++) {
    assert.equal(dt.f32[0 * 5 + c], Math.fround(1 + d[1 * 5 + c]!), `row 0 col ${c}`);
    assert.equal(dt.f32[1 * 5 + c], 1, `row 1 col ${c} (no token) must be unchanged`);
    const want = Math.fround(Math.fround(Math.fround(1 + d[c]!) + d[2 * 5 + c]!) + d[3 * 5 + c]!);
    assert.equal(dt.f32[2 * 5 + c], want, `row 2 col ${c}`);
  }
});

test('embedding: backward matches finite differences (native and twin)', () => {
  const rng = new Rng(44);
  const V = 6, C = 7;
  const ids = randomIds(rng, [17], V);
  const table = randn(rng, [V, C]);
  const R = randn(rng, [17, C]);
  // sum(R * table[ids]) in f64.
  const f = (): number => {
    let loss = 0;
    for (let n = 0; n < 17; n++) for (let c = 0; c < C; c++) loss += R.f32[n * C + c]! * table.f32[ids.i32[n]! * C + c]!;
    return loss;
  };
  for (const [bwd, name] of [[embeddingBackward, 'native'], [embeddingBackwardRef, 'twin']] as const) {
    const dt = Tensor.zeros([V, C]);
    bwd(dt, R, ids);
    checkGrad(f, table.f32, dt.f32, { eps: 2 ** -10, atol: 1e-5, rtol: 1e-5, samples: V * C, what: `${name} dtable` });
  }
});

test('embedding: an id outside [0, V) throws a RangeError naming the row and id; nothing is written', () => {
  const table = Tensor.zeros([50, 4]);
  for (const [fwd, bwd, suffix] of [
    [embeddingForward, embeddingBackward, ''],
    [embeddingForwardRef, embeddingBackwardRef, 'Ref'],
  ] as const) {
    for (const badId of [50, -1, 1 << 30]) {
      const ids = Tensor.fromI32(new Int32Array([0, 49, badId, 3]));
      const out = Tensor.zeros([4, 4]);
      out.f32.fill(7);
      assert.throws(
        () => fwd(out, ids, table),
        (e: unknown) =>
          e instanceof RangeError &&
          new RegExp(`embeddingForward${suffix}: .*id ${badId} at row 2 is outside \\[0, 50\\)`).test(e.message),
      );
      assert.ok(out.f32.every((v) => v === 7), 'out must be untouched');
      const dt = Tensor.zeros([50, 4]);
      assert.throws(
        () => bwd(dt, Tensor.zeros([4, 4]).clone(), ids),
        (e: unknown) => e instanceof RangeError && new RegExp(`embeddingBackward${suffix}: .*id ${badId} at row 2`).test(e.message),
      );
      assert.ok(dt.f32.every((v) => v === 0), 'dtable must be untouched');
    }
  }
});

test('embedding: shape and dtype errors name the op and argument', () => {
  const ids = Tensor.fromI32(new Int32Array([0, 1, 2]));
  const table = Tensor.zeros([5, 4]);
  const bad: Array<[() => void, RegExp, ErrorConstructor]> = [
    [() => embeddingForward(Tensor.zeros([3, 5]), ids, table), /embeddingForward: out/, RangeError],
    [() => embeddingForward(Tensor.zeros([3, 4]), Tensor.zeros([3]), table), /embeddingForward: ids/, TypeError],
    [() => embeddingForward(Tensor.zeros([3, 4]), ids, Tensor.zeros([20])), /embeddingForward: table/, RangeError],
    [() => embeddingForward(Tensor.zeros([12]), ids, table), /embeddingForward: out/, RangeError],
    [() => embeddingBackward(Tensor.zeros([5, 3]), Tensor.zeros([3, 4]), ids), /embeddingBackward: dout/, RangeError],
    [() => embeddingBackward(table, Tensor.zeros([3, 4], 'i32'), ids), /embeddingBackward: dout/, TypeError],
    [() => embeddingBackwardRef(table, Tensor.zeros([2, 4]), ids), /embeddingBackwardRef: dout/, RangeError],
  ];
  for (const [fn, message, type] of bad) assert.throws(fn, (e: unknown) => e instanceof type && message.test((e as Error).message));
});

forEachBackend('embedding forward and accumulating backward match the twins bit for bit, repeated ids', (b) => {
  const rng = new Rng(54);
  for (const [N, V, C] of [[1, 1, 1], [7, 3, 17], [33, 65, 7], [65, 17, 300], [5, 1000, 64]] as const) {
    const what = `N=${N} V=${V} C=${C}`;
    const table = randn(rng, [V, C]);
    const ids = Tensor.zeros([N], 'i32');
    for (let n = 0; n < N; n++) ids.i32[n] = n % 4 === 3 ? ids.i32[n - 1]! : rng.int(0, V); // repeated ids
    const out = Tensor.zeros([N, C]);
    embeddingForwardRef(out, ids, table);
    const gt = b.upload(table.f32), gi = b.upload(ids.i32), go = b.alloc('f32', N * C);
    b.be.embeddingForward(go, gi, gt, N, V, C);
    assertBitExact(b.download(go), out.f32, `${what} forward`);
    const dout = randn(rng, [N, C]), dtable = randn(rng, [V, C]);
    const got = dtable.clone();
    embeddingBackwardRef(dtable, dout, ids);
    if (b.name === 'cpu') embeddingBackward(got, dout, ids);
    else {
      const gdt = b.upload(got.f32) as DeviceArray;
      embeddingBackwardCuda(gdt, b.upload(dout.f32) as DeviceArray, gi as DeviceArray, N, V, C);
      got.f32.set(b.download(gdt));
    }
    assertBitExact(got.f32, dtable.f32, `${what} backward (accumulated)`);
  }
});

forEachCudaBackend('embedding wrappers: an id outside [0, V) throws naming the row, nothing written; argument errors', (b) => {
  const up = (data: Float32Array | Int32Array): DeviceArray => b.upload(data) as DeviceArray;
  const host = (a: DeviceArray): Float32Array => downloadDevice<Float32Array>(a);
  const N = 4, V = 5, C = 3;
  const table = up(new Float32Array(V * C).fill(1)), dout = up(new Float32Array(N * C).fill(1));
  for (const bad of [V, -1, IGNORE_INDEX]) {
    const ids = up(new Int32Array([0, 4, 2, bad]));
    const out = up(new Float32Array(N * C).fill(7)), dt = up(new Float32Array(V * C).fill(7));
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
  const ids = up(new Int32Array(N)), out = b.alloc('f32', N * C) as DeviceArray;
  assert.throws(() => embeddingForwardCuda(out, ids, table, N, V, 4), /embeddingForwardCuda: out: expected 16 elements/);
  assert.throws(() => embeddingForwardCuda(out, b.alloc('f32', N) as DeviceArray, table, N, V, C), /embeddingForwardCuda: ids: expected a i32 device array/);
  assert.throws(() => embeddingForwardCuda(deviceView(table, 0, N * C), ids, table, N, V, C), /embeddingForwardCuda: out overlaps table/);
  assert.throws(() => embeddingBackwardCuda(table, deviceView(table, 0, N * C), ids, N, V, C), /embeddingBackwardCuda: dtable overlaps dout/);
});
