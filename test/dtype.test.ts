// f16/bf16 <-> f32 conversions: native against the TypeScript twins, specials included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../src/engine/random.js';
import { bf16ToF32Ref, f16ToF32Ref, f32ToBf16Ref, f32ToF16Ref, fromF32, toF32 } from '../src/engine/dtype.js';

const specials = [0, -0, 1, -1, 65504, 65520, 1e-8, 6e-8, 5.96e-8, 6.1e-5, 3.14159, Infinity, -Infinity, NaN, 1e30, -1e-30];

function sample(n: number): Float32Array {
  const rng = new Rng(1);
  const a = new Float32Array(n + specials.length);
  for (let i = 0; i < n; i++) a[i] = rng.normal() * 10 ** rng.int(-9, 6);
  a.set(specials, n);
  return a;
}

for (const kind of ['f16', 'bf16'] as const) {
  const toRef = kind === 'f16' ? f32ToF16Ref : f32ToBf16Ref;
  const fromRef = kind === 'f16' ? f16ToF32Ref : bf16ToF32Ref;

  test(`${kind}: fromF32 matches the twin bit for bit`, () => {
    const x = sample(100_003);
    const got = fromF32(kind, x);
    for (let i = 0; i < x.length; i++) assert.equal(got[i], toRef(x[i]!), `element ${i} (${x[i]})`);
  });

  test(`${kind}: toF32 matches the twin for all 65536 bit patterns`, () => {
    const all = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) all[i] = i;
    const got = toF32(kind, all);
    for (let i = 0; i < 65536; i++) {
      const want = fromRef(i);
      if (Number.isNaN(want)) assert.ok(Number.isNaN(got[i]!), `pattern ${i}`);
      else assert.equal(got[i], Math.fround(want), `pattern ${i}`);
    }
  });

  test(`${kind}: round trip of representable values is exact`, () => {
    const all = new Uint16Array(65536);
    for (let i = 0; i < 65536; i++) all[i] = i;
    const f = toF32(kind, all);
    const back = fromF32(kind, f);
    for (let i = 0; i < 65536; i++) if (!Number.isNaN(f[i]!)) assert.equal(back[i], i, `pattern ${i}`);
  });
}
