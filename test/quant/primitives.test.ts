// Quantization primitives: rounding, min-max initialisation, quantize/dequantize and their
// argument checks.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import {
  SCALE_MIN,
  checkGroupLayout,
  dequantize,
  minMaxInit,
  qmax,
  quantize,
  roundHalfEven,
} from '../../src/quant/primitives.js';

test('roundHalfEven rounds ties to even like torch.round', () => {
  const cases: [number, number][] = [
    [0.5, 0],
    [1.5, 2],
    [2.5, 2],
    [-0.5, -0],
    [-1.5, -2],
    [-2.5, -2],
    [3.49, 3],
    [-3.51, -4],
    [7, 7],
    [1e9 + 0.5, 1e9],
    [Math.fround(8388607.5), 8388608],
  ];
  for (const [x, want] of cases) assert.ok(Object.is(roundHalfEven(x), want), `roundHalfEven(${x}) = ${roundHalfEven(x)}, want ${want}`);
  assert.equal(roundHalfEven(Infinity), Infinity);
  assert.ok(Number.isNaN(roundHalfEven(NaN)));
});

test('qmax is 2^bits - 1 and rejects widths outside [2, 8]', () => {
  assert.deepEqual([2, 3, 4, 8].map(qmax), [3, 7, 15, 255]);
  for (const b of [0, 1, 9, 16, 2.5]) assert.throws(() => qmax(b), /bits must be an integer in \[2, 8\]/);
});

test('minMaxInit: a hand-computed group', () => {
  // [-1, 0, 0.5, 2] at 2 bits: range 3, s = 1, z = round(1) = 1.
  // [0.25, 0.5, 1, 1.75] at 2 bits: s = 0.5, z = round(-0.5) = -0 -> +0 (ties to even).
  // [-1.25, 0, 0.25, 0.25] at 2 bits: s = 0.5, z = round(2.5) = 2 (ties to even).
  const w = new Float32Array([-1, 0, 0.5, 2, 0.25, 0.5, 1, 1.75, -1.25, 0, 0.25, 0.25]);
  const { scale, zero } = minMaxInit(w, 1, 12, 2, 4);
  assert.deepEqual([...scale], [1, 0.5, 0.5]);
  assert.deepEqual([...zero], [1, 0, 2]);
});

for (const bits of [2, 3, 4, 8]) {
  test(`minMaxInit ${bits}-bit: every group's min and max map into [0, qmax]`, () => {
    const rng = new Rng(10 + bits);
    const qm = qmax(bits);
    for (const [O, I, G] of [
      [3, 64, 64],
      [17, 96, 32],
      [1, 130, 65],
      [5, 128, 128],
      [4, 21, 7],
    ] as const) {
      const w = new Float32Array(O * I);
      for (let k = 0; k < w.length; k++) w[k] = rng.normal() * 0.02 * (1 + 4 * rng.next());
      const { scale, zero } = minMaxInit(w, O, I, bits, G);
      assert.equal(scale.length, (O * I) / G);
      assert.equal(zero.length, (O * I) / G);
      const q = quantize(w, scale, zero, O, I, bits, G);
      const deq = dequantize(q, scale, zero, O, I, bits, G);
      for (let g = 0; g < (O * I) / G; g++) {
        let xmin = Infinity;
        let xmax = -Infinity;
        for (let e = g * G; e < (g + 1) * G; e++) {
          xmin = Math.min(xmin, w[e]!);
          xmax = Math.max(xmax, w[e]!);
        }
        const s = scale[g]!;
        const z = zero[g]!;
        assert.equal(s, Math.max(SCALE_MIN, Math.fround(Math.fround(xmax - xmin) / qm)), `scale of group ${g}`);
        assert.equal(z, Math.round(z), 'the initial zero point is an integer');
        if (xmin < 0 && xmax > 0) {
          assert.ok(z >= 0 && z <= qm, `zero ${z} of group ${g} outside [0, ${qm}]`);
          for (const x of [xmin, xmax]) {
            const code = roundHalfEven(Math.fround(x / s)) + z;
            assert.ok(code >= 0 && code <= qm, `group ${g}: ${x} maps to code ${code}`);
          }
          // Nothing is clipped, so every element is reconstructed to within half a step.
          for (let e = g * G; e < (g + 1) * G; e++) {
            assert.ok(Math.abs(deq[e]! - w[e]!) <= 0.5 * s * (1 + 1e-5), `group ${g} element ${e}: error ${deq[e]! - w[e]!}, s ${s}`);
          }
        }
      }
    }
  });
}

test('minMaxInit: all-equal groups take the 1e-4 scale clamp', () => {
  // Groups of 4: all 0.5, all 0, all 3 (xmin/s beyond the 1e4 zero clamp), all -0.25.
  const w = new Float32Array([0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0, 3, 3, 3, 3, -0.25, -0.25, -0.25, -0.25]);
  for (const bits of [2, 4, 8]) {
    const { scale, zero } = minMaxInit(w, 2, 8, bits, 4);
    for (let g = 0; g < 4; g++) assert.equal(scale[g], SCALE_MIN, `scale of group ${g}`);
    assert.equal(scale[0], Math.fround(1e-4));
    assert.equal(zero[0], -roundHalfEven(Math.fround(Math.fround(0.5) / SCALE_MIN)));
    assert.ok(Object.is(zero[1], 0));
    assert.equal(zero[2], -1e4);
    assert.equal(zero[3], roundHalfEven(-Math.fround(Math.fround(-0.25) / SCALE_MIN)));
  }
});

test('group layout errors name the op and the offending dimension', () => {
  assert.throws(() => checkGroupLayout(4, 96, 40, 'myOp'), /myOp: group size G = 40 does not divide in_features I = 96/);
  assert.throws(() => checkGroupLayout(0, 96, 32, 'myOp'), /myOp: out_features O must be a positive integer/);
  assert.throws(() => checkGroupLayout(4, 96, 0, 'myOp'), /myOp: group size G must be a positive integer/);
  assert.doesNotThrow(() => checkGroupLayout(4, 96, 96, 'myOp'));
  assert.throws(() => minMaxInit(new Float32Array(10), 2, 5, 4, 2), /minMaxInit: group size G = 2 does not divide in_features I = 5/);
  assert.throws(() => minMaxInit(new Float32Array(9), 2, 5, 4, 5), /minMaxInit: w has 9 elements, expected 10/);
  assert.throws(() => quantize(new Float32Array(8), new Float32Array(3), new Float32Array(4), 2, 4, 4, 2), /quantize: scale has 3 elements/);
});
