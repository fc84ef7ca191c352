// GPTQ packing: hand-computed words for 2/3/4/8 bits, an independent word-by-word transcription
// of the 3-bit layout, exact pack/unpack round trips, v1/v2 zero points, the format traits, and
// rejection of layouts the format cannot hold.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { SCALE_MIN, qmax } from '../../src/quant/primitives.js';
import {
  gIdx,
  gptqScales,
  integerZeros,
  packQweight,
  packQzeros,
  unpackQweight,
  unpackQzeros,
} from '../../src/quant/gptq-pack.js';
import {
  GPTQ_FORMATS,
  bitsPerWeight,
  bytesPerGroup,
  checkGptqLayout,
  gptqFormat,
  gptqQuantizationConfig,
  packedWords,
} from '../../src/quant/formats.js';

const u32 = (a: Int32Array): number[] => [...a].map((x) => x >>> 0);

function randomCodes(rng: Rng, n: number, bits: number): Uint8Array {
  const q = new Uint8Array(n);
  for (let k = 0; k < n; k++) q[k] = rng.int(0, qmax(bits) + 1);
  return q;
}

test('gptq 4-bit qweight: hand-computed words', () => {
  // O = 2, I = 8: one word row; column o holds inputs 0..7 of output o, input j at bits 4j.
  const q = new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8, 15, 0, 0, 0, 0, 0, 0, 15]);
  const w = packQweight(q, 2, 8, 4);
  assert.deepEqual(u32(w), [0x87654321, 0xf000000f]);
  assert.deepEqual([...unpackQweight(w, 2, 8, 4)], [...q]);
  // O = 1, I = 16: two rows, the second holding inputs 8..15.
  const q2 = new Uint8Array([0, 0, 0, 0, 0, 0, 0, 0, 9, 10, 11, 12, 13, 14, 15, 1]);
  assert.deepEqual(u32(packQweight(q2, 1, 16, 4)), [0, 0x1fedcba9]);
});

test('gptq 2-bit and 8-bit qweight: hand-computed words', () => {
  const q2 = new Uint8Array(16);
  for (let j = 0; j < 16; j++) q2[j] = j % 4;
  assert.deepEqual(u32(packQweight(q2, 1, 16, 2)), [0xe4e4e4e4]);
  assert.deepEqual(u32(packQweight(new Uint8Array([1, 2, 3, 255]), 1, 4, 8)), [0xff030201]);
});

test('gptq 3-bit qweight: hand-computed words, values 10 and 21 straddle words', () => {
  // O = 2, I = 32: three word rows. Column 0: v0 = 6, v10 = 7, v11 = 1, v21 = 5, v31 = 3.
  //   word 0: 6 at bits 0-2, low two bits of v10 (0b11) at bits 30-31       -> 0xC0000006
  //   word 1: high bit of v10 at bit 0, v11 at bits 1-3, low bit of v21 at 31 -> 0x80000003
  //   word 2: high two bits of v21 (0b10) at bits 0-1, v31 at bits 29-31     -> 0x60000002
  // Column 1: all 7 -> every bit set.
  const q = new Uint8Array(64);
  q[0] = 6;
  q[10] = 7;
  q[11] = 1;
  q[21] = 5;
  q[31] = 3;
  q.fill(7, 32, 64);
  const w = packQweight(q, 2, 32, 3);
  // qweight is (3, 2): row r, column o at r*2 + o.
  assert.deepEqual(u32(w), [0xc0000006, 0xffffffff, 0x80000003, 0xffffffff, 0x60000002, 0xffffffff]);
  assert.deepEqual([...unpackQweight(w, 2, 32, 3)], [...q]);
});

/** The 3-bit layout written out word by word (three words per 32 values), for one column. */
function pack3Explicit(v: Uint8Array): number[] {
  const words: number[] = [];
  for (let base = 0; base < v.length; base += 32) {
    let w0 = 0;
    let w1 = 0;
    let w2 = 0;
    for (let j = 0; j < 10; j++) w0 |= v[base + j]! << (3 * j);
    w0 |= (v[base + 10]! & 3) << 30;
    w1 |= v[base + 10]! >> 2;
    for (let j = 0; j < 10; j++) w1 |= v[base + 11 + j]! << (3 * j + 1);
    w1 |= (v[base + 21]! & 1) << 31;
    w2 |= v[base + 21]! >> 1;
    for (let j = 0; j < 10; j++) w2 |= v[base + 22 + j]! << (3 * j + 2);
    words.push(w0 >>> 0, w1 >>> 0, w2 >>> 0);
  }
  return words;
}

test('gptq 3-bit qweight matches the word-by-word layout on random codes', () => {
  const rng = new Rng(3);
  const O = 5;
  const I = 96;
  const q = randomCodes(rng, O * I, 3);
  const w = packQweight(q, O, I, 3);
  const rows = (I * 3) / 32;
  for (let o = 0; o < O; o++) {
    const col = [];
    for (let r = 0; r < rows; r++) col.push(w[r * O + o]! >>> 0);
    assert.deepEqual(col, pack3Explicit(q.subarray(o * I, (o + 1) * I)), `column ${o}`);
  }
});

for (const bits of [2, 3, 4, 8]) {
  test(`gptq ${bits}-bit: pack/unpack round trips are exact`, () => {
    const rng = new Rng(40 + bits);
    for (const [O, I, G] of [
      [32, 32, 32],
      [64, 96, 32],
      [96, 256, 128],
      [32, 4096, 4096],
    ] as const) {
      const q = randomCodes(rng, O * I, bits);
      const qw = packQweight(q, O, I, bits);
      assert.equal(qw.length, ((I * bits) / 32) * O);
      assert.deepEqual(unpackQweight(qw, O, I, bits), q);

      const groups = I / G;
      const z = randomCodes(rng, O * groups, bits);
      const qz = packQzeros(z, O, groups, bits);
      assert.equal(qz.length, groups * ((O * bits) / 32));
      assert.deepEqual(unpackQzeros(qz, O, groups, bits), z);
      // qzeros row g is the same bit stream as packing z[:, g] along a packed dimension.
      for (let g = 0; g < groups; g++) {
        const col = new Uint8Array(O);
        for (let o = 0; o < O; o++) col[o] = z[o * groups + g]!;
        const cols = (O * bits) / 32;
        assert.deepEqual(qz.subarray(g * cols, (g + 1) * cols), packQweight(col, 1, O, bits), `qzeros row ${g}`);
      }
      // v1 stores zero - 1 (zeros >= 1 only).
      const z1 = z.map((v) => Math.max(v, 1));
      const qz1 = packQzeros(z1, O, groups, bits, 'gptq');
      assert.deepEqual(unpackQzeros(qz1, O, groups, bits, 'gptq'), z1);
      assert.deepEqual(unpackQzeros(qz1, O, groups, bits, 'gptq_v2'), z1.map((v) => v - 1));
    }
  });
}

test('gptq qzeros: hand-computed 4-bit words, v2 and v1', () => {
  // O = 8, groups = 2; z (O, groups) row-major: z[o, 0] = o + 1, z[o, 1] = 15 - o.
  const z = new Uint8Array(16);
  for (let o = 0; o < 8; o++) {
    z[o * 2] = o + 1;
    z[o * 2 + 1] = 15 - o;
  }
  assert.deepEqual(u32(packQzeros(z, 8, 2, 4)), [0x87654321, 0x89abcdef]);
  assert.deepEqual(u32(packQzeros(z, 8, 2, 4, 'gptq')), [0x76543210, 0x789abcde]);
});

test('gptq: zero points v1 cannot hold are rejected', () => {
  const z = new Uint8Array(32).fill(3);
  z[5] = 0;
  assert.throws(() => packQzeros(z, 32, 1, 4, 'gptq'), /packQzeros: z\[5, 0\] = 0 cannot be stored in GPTQ v1/);
  assert.doesNotThrow(() => packQzeros(z, 32, 1, 4, 'gptq_v2'));
  // A v1 field of qmax means zero point qmax + 1, which eqat cannot represent.
  const qz = new Int32Array(4).fill(-1);
  assert.throws(() => unpackQzeros(qz, 32, 1, 4, 'gptq'), /unpackQzeros: zero point 16 at \(0, 0\)/);
});

test('gptq: bad layouts are rejected with clear errors', () => {
  assert.throws(() => packQweight(new Uint8Array(16), 1, 16, 3), /packQweight: in_features I: gptq-w3 packs values in units of 32/);
  assert.throws(() => packQweight(new Uint8Array(12), 1, 12, 4), /packQweight: in_features I: gptq-w4 packs values in units of 8/);
  assert.throws(() => packQweight(new Uint8Array(32), 1, 32, 5), /GPTQ packs 2, 3, 4 or 8 bits, got bits = 5/);
  assert.throws(() => packQweight(new Uint8Array(31), 1, 32, 4), /packQweight: q has 31 elements, expected 32/);
  const bad = new Uint8Array(32);
  bad[7] = 16;
  assert.throws(() => packQweight(bad, 1, 32, 4), /packQweight: q\[0, 7\] = 16 does not fit in 4 bits/);
  assert.throws(() => unpackQweight(new Int32Array(3), 2, 32, 3), /unpackQweight: qweight has 3 elements, expected 6/);
  assert.throws(() => packQzeros(new Uint8Array(16), 16, 1, 3), /packQzeros: out_features O: gptq-w3 packs values in units of 32/);
  assert.throws(() => unpackQzeros(new Int32Array(1), 20, 1, 2), /unpackQzeros: out_features O: gptq-w2 packs values in units of 16/);
  assert.throws(() => gIdx(100, 32), /gIdx: group size G = 32 does not divide in_features I = 100/);
  assert.throws(() => checkGptqLayout(48, 128, 64, 4, 'export'), /export: gptq-w4 needs out_features O to be a multiple of 32, got 48/);
  assert.throws(() => checkGptqLayout(64, 80, 16, 2, 'export'), /export: gptq-w2 needs in_features I to be a multiple of 32, got 80/);
  assert.throws(() => checkGptqLayout(64, 128, 48, 3, 'export'), /export: group size G = 48 must divide in_features I = 128/);
  assert.doesNotThrow(() => checkGptqLayout(4096, 11008, 128, 3, 'export'));
});

test('gptq: g_idx, scales and integer zeros in export layout', () => {
  assert.deepEqual([...gIdx(8, 4)], [0, 0, 0, 0, 1, 1, 1, 1]);
  assert.deepEqual([...gIdx(3, 3)], [0, 0, 0]);
  // scale (O=2, groups=3) -> (3, 2), clamped to [1e-4, 1e4].
  const s = new Float32Array([0.5, 1e-6, 2e5, 0.25, 3, 0.125]);
  assert.deepEqual([...gptqScales(s, 2, 3)], [0.5, 0.25, SCALE_MIN, 3, 1e4, 0.125]);
  assert.deepEqual([...integerZeros(new Float32Array([-1.2, 2.5, 3.5, 7.4, 20, 0.49]), 3)], [0, 2, 4, 7, 7, 0]);
});

test('gptq format traits', () => {
  assert.equal(GPTQ_FORMATS[3].valuesPerUnit, 32);
  assert.equal(GPTQ_FORMATS[3].wordsPerUnit, 3);
  assert.equal(GPTQ_FORMATS[3].straddlesWords, true);
  assert.deepEqual(
    [2, 4, 8].map((b) => [gptqFormat(b).valuesPerUnit, gptqFormat(b).wordsPerUnit, gptqFormat(b).straddlesWords]),
    [
      [16, 1, false],
      [8, 1, false],
      [4, 1, false],
    ],
  );
  assert.equal(packedWords(GPTQ_FORMATS[3], 96), 9);
  assert.equal(packedWords(GPTQ_FORMATS[4], 4096), 512);
  assert.throws(() => packedWords(GPTQ_FORMATS[8], 6), /gptq-w8 packs values in units of 4/);
  assert.equal(bytesPerGroup(GPTQ_FORMATS[4], 128), 64 + 2 + 0.5);
  assert.equal(bitsPerWeight(GPTQ_FORMATS[2], 64), 2 + 16 / 64 + 2 / 64);
  const cfg = gptqQuantizationConfig(2, 64);
  assert.equal(cfg['checkpoint_format'], 'gptq_v2');
  assert.equal(cfg['sym'], false);
  assert.equal(cfg['group_size'], 64);
  assert.throws(() => gptqQuantizationConfig(6, 64), /got bits = 6/);
});
