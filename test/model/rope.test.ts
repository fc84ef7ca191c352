// RoPE tables: default inverse frequencies and cos/sin against an independent f64
// computation (with an error bound derived from f32 rounding at larger positions), table
// offsets, linear scaling, the three regimes of llama3 scaling with Llama-3.1's parameters,
// and argument errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ropeInvFreq, ropeTables } from '../../src/model/rope.js';
import type { RopeScaling } from '../../src/model/config.js';

const DEFAULT: RopeScaling = { type: 'default' };

test('ropeInvFreq: default theta 10000, D 32 matches theta^(-2i/D) within f32 rounding', () => {
  const inv = ropeInvFreq(32, 10000, DEFAULT);
  assert.equal(inv.length, 16);
  assert.equal(inv[0], 1);
  for (let i = 0; i < 16; i++) {
    const exact = Math.pow(10000, (-2 * i) / 32);
    assert.ok(Math.abs(inv[i]! - exact) <= 2 ** -22 * exact, `inv_freq[${i}] = ${inv[i]}, exact ${exact}`);
  }
});

test('ropeTables: default theta 10000, D 32 cos/sin match an f64 computation', () => {
  const D = 32, half = 16;
  const cfg = { headDim: D, ropeTheta: 10000, ropeScaling: DEFAULT };
  const { cos, sin } = ropeTables(cfg, 0, 2048);
  assert.deepEqual(cos.shape, [2048, half]);
  assert.deepEqual(sin.shape, [2048, half]);
  const check = (pos: number, tol: (angle: number) => number): void => {
    for (let i = 0; i < half; i++) {
      const angle = pos * Math.pow(10000, (-2 * i) / D);
      const c = cos.f32[pos * half + i]!, s = sin.f32[pos * half + i]!;
      assert.ok(Math.abs(c - Math.cos(angle)) <= tol(angle), `cos pos ${pos} i ${i}: ${c} vs ${Math.cos(angle)}`);
      assert.ok(Math.abs(s - Math.sin(angle)) <= tol(angle), `sin pos ${pos} i ${i}: ${s} vs ${Math.sin(angle)}`);
    }
  };
  // Small positions: within 1e-6 of the exact values.
  for (const pos of [0, 1, 2, 3, 5]) check(pos, () => 1e-6);
  // Larger positions: the f32 angle pos * inv_freq carries the inverse frequency's relative
  // error (<= 2^-22) and its own rounding (<= 2^-24 relative); cos/sin add 2^-24 absolute.
  for (const pos of [100, 1000, 2047]) check(pos, (angle) => angle * (2 ** -22 + 2 ** -24) + 2 ** -24);
  // Position 0 is exactly cos 1, sin 0.
  assert.ok(cos.f32.subarray(0, half).every((v) => v === 1));
  assert.ok(sin.f32.subarray(0, half).every((v) => v === 0));
});

test('ropeTables: a window [start, start + count) equals the same rows of the full table', () => {
  const cfg = { headDim: 6, ropeTheta: 1e6, ropeScaling: DEFAULT };
  const full = ropeTables(cfg, 0, 40);
  const part = ropeTables(cfg, 33, 7);
  assert.deepEqual(part.cos.shape, [7, 3]);
  assert.deepEqual(part.cos.f32, full.cos.f32.subarray(33 * 3, 40 * 3));
  assert.deepEqual(part.sin.f32, full.sin.f32.subarray(33 * 3, 40 * 3));
  assert.equal(ropeTables(cfg, 5, 0).cos.size, 0);
});

test('ropeInvFreq/ropeTables: linear scaling divides the frequencies (positions) by factor', () => {
  const D = 64;
  const plain = ropeInvFreq(D, 10000, DEFAULT);
  const linear = ropeInvFreq(D, 10000, { type: 'linear', factor: 4 });
  for (let i = 0; i < D / 2; i++) assert.equal(linear[i], plain[i]! / 4);
  // With factor 2, position 2k sees exactly the angles of position k unscaled.
  const scaled = ropeTables({ headDim: D, ropeTheta: 10000, ropeScaling: { type: 'linear', factor: 2 } }, 0, 64);
  const base = ropeTables({ headDim: D, ropeTheta: 10000, ropeScaling: DEFAULT }, 0, 32);
  for (let k = 0; k < 32; k++) {
    assert.deepEqual(scaled.cos.f32.subarray(2 * k * 32, (2 * k + 1) * 32), base.cos.f32.subarray(k * 32, (k + 1) * 32));
  }
});

test('ropeInvFreq: llama3 scaling (Llama-3.1: factor 8, low 1, high 4, original 8192, theta 500000, D 128)', () => {
  const D = 128, theta = 500000;
  const scaling: RopeScaling = {
    type: 'llama3',
    factor: 8,
    lowFreqFactor: 1,
    highFreqFactor: 4,
    originalMaxPositionEmbeddings: 8192,
  };
  const plain = ropeInvFreq(D, theta, DEFAULT);
  const inv = ropeInvFreq(D, theta, scaling);
  const lowFreqWavelen = 8192 / 1, highFreqWavelen = 8192 / 4;
  const regimes = { high: 0, low: 0, medium: 0 };
  for (let i = 0; i < D / 2; i++) {
    const exact = Math.pow(theta, (-2 * i) / D);
    const wavelen = (2 * Math.PI) / exact;
    const got = inv[i]!;
    if (wavelen < highFreqWavelen) {
      regimes.high++;
      assert.equal(got, plain[i], `high-frequency ${i} must be unchanged`);
      assert.ok(Math.abs(got - exact) <= 2 ** -22 * exact, `high ${i}: ${got} vs ${exact}`);
    } else if (wavelen > lowFreqWavelen) {
      regimes.low++;
      assert.equal(got, Math.fround(plain[i]! / 8), `low-frequency ${i} must be divided by 8`);
      assert.ok(Math.abs(got - exact / 8) <= 2 ** -22 * (exact / 8), `low ${i}: ${got} vs ${exact / 8}`);
    } else {
      regimes.medium++;
      const smooth = (8192 / wavelen - 1) / (4 - 1);
      assert.ok(smooth > 0 && smooth < 1, `medium ${i}: smooth ${smooth}`);
      const want = (1 - smooth) * (exact / 8) + smooth * exact;
      assert.ok(Math.abs(got - want) <= 1e-6 * want, `medium ${i}: ${got} vs ${want}`);
      assert.ok(got < plain[i]! && got > plain[i]! / 8, `medium ${i} lies between inv_freq/8 and inv_freq`);
    }
  }
  // With these parameters: i <= 28 high, 29..34 interpolated, 35..63 divided.
  assert.deepEqual(regimes, { high: 29, medium: 6, low: 29 });
});

test('ropeInvFreq/ropeTables: argument errors name the function and argument', () => {
  assert.throws(() => ropeInvFreq(7, 10000, DEFAULT), /ropeInvFreq: headDim/);
  assert.throws(() => ropeInvFreq(8, 0, DEFAULT), /ropeInvFreq: theta/);
  assert.throws(() => ropeInvFreq(8, 10000, { type: 'linear', factor: 0 }), /ropeInvFreq: scaling.factor/);
  assert.throws(
    () =>
      ropeInvFreq(8, 10000, { type: 'llama3', factor: 8, lowFreqFactor: 4, highFreqFactor: 1, originalMaxPositionEmbeddings: 8192 }),
    /ropeInvFreq: scaling.highFreqFactor/,
  );
  const cfg = { headDim: 8, ropeTheta: 10000, ropeScaling: DEFAULT };
  assert.throws(() => ropeTables(cfg, -1, 3), /ropeTables: start/);
  assert.throws(() => ropeTables(cfg, 0, 2.5), /ropeTables: count/);
});
