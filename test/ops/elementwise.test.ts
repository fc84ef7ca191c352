// Elementwise ops. The Backend's add and copy, one spec on every backend (test/ops/spec.ts):
// bit for bit against the twins on odd sizes, in place too. The CPU ops: native against the
// TypeScript twins (bit for bit) on odd and large sizes, aliased outputs, broadcast bias add and
// its column-sum backward, copy with overlapping views, fill, and the shape / dtype / overlap
// errors of the wrappers. The CUDA wrappers without a Backend counterpart (scale, bias add and
// its backward, the f32 <-> bf16 conversions) against the same twins, bit for bit, on the
// CUDA backends of test/cuda/backends.ts, and their argument errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { accumulate, add, addBias, biasBackward, copy, fill, mul, scale } from '../../src/ops/elementwise.js';
import {
  accumulateRef,
  addBiasRef,
  addRef,
  biasBackwardRef,
  copyRef,
  fillRef,
  mulRef,
  scaleRef,
} from '../../src/ops/ref/elementwise.js';
import { bf16ToF32Ref, f32ToBf16Ref } from '../../src/engine/dtype.js';
import { deviceView, downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { addBiasCuda, bf16ToF32Cuda, biasBackwardCuda, copyCuda, f32ToBf16Cuda, scaleCuda } from '../../src/ops/cuda/elementwise.js';
import { assertClose, ODD_SIZES, randn } from '../util.js';
import { assertBitExact, testOnBackends } from '../cuda/backends.js';
import { forEachBackend } from './spec.js';

const SIZES = [...ODD_SIZES, 1000, 1_000_003];

/** Asserts two f32 arrays hold the same values (NaN equals NaN); reports the first difference. */
function assertSameBits(actual: Float32Array, expected: Float32Array, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length`);
  for (let i = 0; i < actual.length; i++) {
    if (!Object.is(actual[i], expected[i])) assert.fail(`${what}: element ${i}: got ${actual[i]}, expected ${expected[i]}`);
  }
}

test('add, mul, accumulate, scale match the twins bit for bit', () => {
  const rng = new Rng(11);
  for (const n of SIZES) {
    const a = randn(rng, [n]);
    const b = randn(rng, [n], 3);
    const out = Tensor.zeros([n]);
    const want = Tensor.zeros([n]);
    add(out, a, b);
    addRef(want, a, b);
    assertSameBits(out.f32, want.f32, `add n=${n}`);
    mul(out, a, b);
    mulRef(want, a, b);
    assertSameBits(out.f32, want.f32, `mul n=${n}`);
    for (const alpha of [1, -0.37, 1e-3]) {
      const d = randn(rng, [n]);
      const dRef = d.clone();
      accumulate(d, a, alpha);
      accumulateRef(dRef, a, alpha);
      assertSameBits(d.f32, dRef.f32, `accumulate n=${n} alpha=${alpha}`);
      scale(out, b, alpha);
      scaleRef(want, b, alpha);
      assertSameBits(out.f32, want.f32, `scale n=${n} alpha=${alpha}`);
    }
    const d = randn(rng, [n]);
    const dRef = d.clone();
    accumulate(d, a); // default alpha 1 is a plain add
    addRef(dRef, dRef, a);
    assertSameBits(d.f32, dRef.f32, `accumulate default alpha n=${n}`);
  }
});

test('ops work on multi-dimensional tensors as flat element lists', () => {
  const rng = new Rng(12);
  const a = randn(rng, [3, 5, 7]);
  const b = randn(rng, [3, 5, 7]);
  const out = Tensor.zeros([3, 5, 7]);
  const want = Tensor.zeros([3, 5, 7]);
  add(out, a, b);
  addRef(want, a, b);
  assertSameBits(out.f32, want.f32, 'add (3,5,7)');
});

test('outputs may alias inputs', () => {
  const rng = new Rng(13);
  for (const n of [17, 65, 100_003]) {
    const a0 = randn(rng, [n]);
    const b0 = randn(rng, [n]);
    const want = Tensor.zeros([n]);

    let a = a0.clone();
    add(a, a, b0);
    addRef(want, a0, b0);
    assertSameBits(a.f32, want.f32, `add out=a n=${n}`);

    let b = b0.clone();
    add(b, a0, b);
    assertSameBits(b.f32, want.f32, `add out=b n=${n}`);

    a = a0.clone();
    add(a, a, a);
    addRef(want, a0, a0);
    assertSameBits(a.f32, want.f32, `add out=a=b n=${n}`);

    b = b0.clone();
    mul(b, a0, b);
    mulRef(want, a0, b0);
    assertSameBits(b.f32, want.f32, `mul out=b n=${n}`);

    a = a0.clone();
    scale(a, a, -2.5);
    scaleRef(want, a0, -2.5);
    assertSameBits(a.f32, want.f32, `scale out=a n=${n}`);

    a = a0.clone();
    accumulate(a, a, 0.5);
    const aRef = a0.clone();
    accumulateRef(aRef, a0, 0.5);
    assertSameBits(a.f32, aRef.f32, `accumulate dst=src n=${n}`);
  }
});

test('addBias and biasBackward match the twins on odd and large shapes', () => {
  const rng = new Rng(14);
  const shapes: number[][] = [];
  for (const N of [1, 3, 17]) for (const C of ODD_SIZES) shapes.push([N, C]);
  shapes.push([2, 3, 33], [1000, 1003], [4096, 17], [3, 70_001]);
  for (const shape of shapes) {
    const C = shape[shape.length - 1]!;
    const out = randn(rng, shape);
    const outRef = out.clone();
    const bias = randn(rng, [C]);
    addBias(out, bias);
    addBiasRef(outRef, bias);
    assertSameBits(out.f32, outRef.f32, `addBias [${shape}]`);

    const dbias = randn(rng, [C]);
    const dbiasRef = dbias.clone();
    const dout = randn(rng, shape);
    biasBackward(dbias, dout);
    biasBackwardRef(dbiasRef, dout);
    // f64 column sums in a different order, rounded once to f32: at most one rounding apart
    assertClose(dbias.f32, dbiasRef.f32, { atol: 1e-6, rtol: 2 ** -23, what: `biasBackward [${shape}]` });
  }
});

test('biasBackward accumulates and is exact on integers', () => {
  const N = 5000, C = 19;
  const dout = Tensor.zeros([N, C]);
  for (let i = 0; i < dout.size; i++) dout.f32[i] = (i % 7) - 3;
  const dbias = Tensor.zeros([C]);
  fill(dbias, 10);
  biasBackward(dbias, dout);
  const want = new Float32Array(C).fill(10);
  for (let i = 0; i < dout.size; i++) want[i % C]! += dout.f32[i]!;
  assertSameBits(dbias.f32, want, 'biasBackward on integers');
});

test('copy and fill, including overlapping views', () => {
  const rng = new Rng(15);
  for (const n of SIZES) {
    const src = randn(rng, [n]);
    const dst = Tensor.zeros([n]);
    copy(dst, src);
    const want = Tensor.zeros([n]);
    copyRef(want, src);
    assertSameBits(dst.f32, want.f32, `copy n=${n}`);
    fill(dst, -1.25);
    fillRef(want, -1.25);
    assertSameBits(dst.f32, want.f32, `fill n=${n}`);
  }
  const base = randn(rng, [300_000]);
  const expected = base.f32.slice();
  expected.copyWithin(1000, 0, 200_000);
  copy(Tensor.fromF32(base.f32.subarray(1000, 201_000)), Tensor.fromF32(base.f32.subarray(0, 200_000)));
  assertSameBits(base.f32, expected, 'copy to an overlapping view (forward)');
  const expected2 = base.f32.slice();
  expected2.copyWithin(0, 1000, 201_000);
  copy(Tensor.fromF32(base.f32.subarray(0, 200_000)), Tensor.fromF32(base.f32.subarray(1000, 201_000)));
  assertSameBits(base.f32, expected2, 'copy to an overlapping view (backward)');
  const t = Tensor.zeros([5]);
  fill(t, 0.1);
  assert.equal(t.f32[4], Math.fround(0.1));
});

test('empty tensors are a no-op', () => {
  const e = Tensor.zeros([0]);
  add(e, e, e);
  mul(e, e, e);
  accumulate(e, e, 2);
  scale(e, e, 2);
  copy(e, e);
  fill(e, 1);
  const dbias = Tensor.fromF32(new Float32Array([1, 2]));
  biasBackward(dbias, Tensor.zeros([0, 2]));
  assert.deepEqual([...dbias.f32], [1, 2]);
  addBias(Tensor.zeros([0, 2]), dbias);
});

test('errors name the op and the argument', () => {
  const a = Tensor.zeros([3, 4]);
  const b = Tensor.zeros([4, 3]);
  const i = Tensor.zeros([3, 4], 'i32');
  assert.throws(() => add(Tensor.zeros([3, 4]), a, b), (e: Error) => e instanceof RangeError && /add: argument 'b'/.test(e.message));
  assert.throws(() => mul(Tensor.zeros([12]), a, a), (e: Error) => e instanceof RangeError && /mul: argument 'out'/.test(e.message));
  assert.throws(() => add(a, a, i), (e: Error) => e instanceof TypeError && /add: argument 'b'/.test(e.message));
  assert.throws(() => accumulate(a, b), (e: Error) => e instanceof RangeError && /accumulate: argument 'src'/.test(e.message));
  assert.throws(() => scale(b, a, 2), (e: Error) => e instanceof RangeError && /scale: argument 'out'/.test(e.message));
  assert.throws(() => copy(a, b), (e: Error) => e instanceof RangeError && /copy: argument 'src'/.test(e.message));
  assert.throws(() => fill(i, 1), (e: Error) => e instanceof TypeError && /fill: argument 't'/.test(e.message));
  assert.throws(() => addBias(a, Tensor.zeros([3])), (e: Error) => e instanceof RangeError && /addBias: argument 'bias'/.test(e.message));
  assert.throws(() => biasBackward(Tensor.zeros([3]), a), (e: Error) => e instanceof RangeError && /biasBackward: argument 'dbias'/.test(e.message));
  assert.throws(() => scale(a, a, '2' as unknown as number), (e: Error) => e instanceof TypeError && /scale: argument 'alpha'/.test(e.message));
  const buf = new Float32Array(20);
  const x = Tensor.fromF32(buf.subarray(0, 10));
  const y = Tensor.fromF32(buf.subarray(5, 15));
  assert.throws(() => add(y, x, x), (e: Error) => e instanceof RangeError && /add: argument 'out' overlaps 'a'/.test(e.message));
  assert.throws(() => accumulate(y, x), (e: Error) => e instanceof RangeError && /accumulate/.test(e.message));
});

const host = (a: DeviceArray): Float32Array => downloadDevice<Float32Array>(a);

forEachBackend('add (in place too) and copy match the twins bit for bit', (b) => {
  const rng = new Rng(11);
  for (const n of [...ODD_SIZES, 70_001]) {
    const a = randn(rng, [n]), c = randn(rng, [n]);
    const want = Tensor.zeros([n]);
    addRef(want, a, c);
    const ga = b.upload(a.f32), gc = b.upload(c.f32), gout = b.alloc('f32', n);
    b.be.add(gout, ga, gc);
    assertBitExact(b.download(gout), want.f32, `add n=${n}`);
    b.be.add(ga, ga, gc);
    assertBitExact(b.download(ga), want.f32, `add in place n=${n}`);
    const gcopy = b.alloc('f32', n);
    b.be.copy(gcopy, gc);
    assertBitExact(b.download(gcopy), c.f32, `copy n=${n}`);
  }
  if (b.name === 'cpu') return;
  // The CUDA bias add and its column sums (f64, rows in order), on the same random stream.
  for (const [rows, cols] of [[1, 1], [3, 7], [17, 130], [64, 33], [0, 5], [1000, 3]] as const) {
    const x = randn(rng, [rows, cols]), bias = randn(rng, [cols]), g = randn(rng, [cols]);
    const out = x.clone();
    addBiasRef(out, bias);
    const dx = b.upload(x.f32) as DeviceArray;
    addBiasCuda(dx, b.upload(bias.f32) as DeviceArray, cols);
    assertBitExact(host(dx), out.f32, `addBias ${rows}x${cols}`);
    const gref = g.clone();
    biasBackwardRef(gref, x);
    const dg = b.upload(g.f32) as DeviceArray;
    biasBackwardCuda(dg, b.upload(x.f32) as DeviceArray, cols);
    assertBitExact(host(dg), gref.f32, `biasBackward ${rows}x${cols}`);
  }
});

testOnBackends('elementwise wrappers: argument errors name the op and argument', (s) => {
  const x = s.alloc('f32', 10), bias = s.alloc('f32', 4);
  assert.throws(() => addBiasCuda(x, bias, 4), /addBiasCuda: out has 10 elements, not a multiple of cols = 4/);
  assert.throws(() => biasBackwardCuda(bias, x, 5), /biasBackwardCuda: bias/);
  assert.throws(() => copyCuda(deviceView(x, 0, 6), deviceView(x, 4, 6)), /copyCuda: dst and src overlap/);
});

testOnBackends('scale matches scaleRef bit for bit, in place too', (s) => {
  const rng = new Rng(1);
  for (const n of [...ODD_SIZES, 1000, 70_001]) {
    const x = randn(rng, [n]);
    const alpha = rng.normal();
    const ref = Tensor.zeros([n]);
    scaleRef(ref, x, alpha);
    const dx = s.upload(x.f32), dout = s.alloc('f32', n);
    scaleCuda(dout, dx, alpha);
    assertBitExact(host(dout), ref.f32, `scale n=${n}`);
    scaleCuda(dx, dx, alpha);
    assertBitExact(host(dx), ref.f32, `scale in place n=${n}`);
  }
});

testOnBackends('f32 <-> bf16 conversions match the twins bit for bit (ties, NaN, infinities, -0)', (s) => {
  const special = [0, -0, 1, -1, Infinity, -Infinity, NaN, 1e-40, -1e-40, 3.4e38, -3.4e38, 1.00390625, 1.01171875, 65504];
  const rng = new Rng(2);
  const x = new Float32Array(4099);
  rng.fillNormal(x, 100);
  x.set(special);
  // exact ties between two bf16 values: the 16 dropped bits are 0x8000
  const u = new Uint32Array(x.buffer);
  for (let i = special.length; i < special.length + 64; i++) u[i] = ((rng.nextU32() & 0xffff0000) | 0x8000) >>> 0;
  const dx = s.upload(x), dh = s.alloc('bf16', x.length);
  f32ToBf16Cuda(dh, dx);
  const got = downloadDevice<Uint16Array>(dh);
  assertBitExact(got, Uint16Array.from(x, (v) => f32ToBf16Ref(v)), 'f32 -> bf16');
  // every bf16 bit pattern back to f32: the twin's definition is the bit pattern h << 16
  // (compared as bits: reading a NaN through a JS number would lose its payload)
  const all = new Uint16Array(65536).map((_, i) => i);
  const dall = s.upload(all, 'bf16'), dback = s.alloc('f32', all.length);
  bf16ToF32Cuda(dback, dall);
  const back = host(dback);
  assertBitExact(new Uint32Array(back.buffer), Uint32Array.from(all, (h) => (h << 16) >>> 0), 'bf16 -> f32 bits');
  for (let h = 0; h < 65536; h += 97) if (!Number.isNaN(back[h])) assert.equal(back[h], bf16ToF32Ref(h), `bf16 ${h}`);
});
