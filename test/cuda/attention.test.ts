// Causal GQA attention on CUDA (src/ops/cuda/attention.ts) against the CPU twin
// (src/ops/ref/attention.ts) on every backend of backends.ts (GPU when present, the CPU emulator
// of the kernel sources), with the CPU tests' tolerances: out and lse of the forward, and dq,
// dk, dv of the backward accumulated into pre-filled gradients (as the CPU op, the backward
// adds). Odd sequence lengths (1, 7, 33, 65: one to three tiles, partial last tiles), head dims
// 16, 32 and 64 (and odd ones, and the 128 and 256 kernel instances), GQA ratios 1 and 3,
// sliding windows on and off, decoding (Tq < Tk, qOffset); argument errors.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import type { AttentionOptions } from '../../src/ops/attention.js';
import { attentionBackwardRef, attentionForwardRef } from '../../src/ops/ref/attention.js';
import { attentionBackwardCuda, attentionForwardCuda, type AttentionShape } from '../../src/ops/cuda/attention.js';
import { ATTENTION_SCORE_BYTES, AttentionGemmScratch, attentionGemmBackwardCuda, attentionGemmForwardCuda, attentionPathCuda, attentionScoreBytesCuda } from '../../src/ops/cuda/attention-gemm.js';
import { AttentionTcScratch, attentionTcBackwardCuda, attentionTcForwardCuda, attentionTcUnsupported } from '../../src/ops/cuda/attention-tc.js';
import { assertClose, randn } from '../util.js';
import { assertBitExact, testOnBackends, type Scope } from './backends.js';
import { f32ToBf16Ref } from '../../src/engine/dtype.js';

const FWD_TOL = { atol: 1e-5, rtol: 1e-4 };
const BWD_TOL = { atol: 2e-5, rtol: 1e-4 };

interface Case extends AttentionShape {
  opts?: AttentionOptions;
}

function label(c: Case): string {
  return `B=${c.B} Tq=${c.Tq} Tk=${c.Tk} H=${c.H}/${c.Hkv} D=${c.D} ${JSON.stringify(c.opts ?? {})}`;
}

/** A CUDA implementation of the op: the flash kernels, or the GEMM path with its scratch. */
interface Impl {
  forward(s: Scope, out: DeviceArray, lse: DeviceArray, q: DeviceArray, k: DeviceArray, v: DeviceArray, c: Case): void;
  backward(
    s: Scope,
    dq: DeviceArray, dk: DeviceArray, dv: DeviceArray, dout: DeviceArray, q: DeviceArray, k: DeviceArray, v: DeviceArray,
    out: DeviceArray, lse: DeviceArray, c: Case,
  ): void;
  fwdTol: { atol: number; rtol: number };
  bwdTol: { atol: number; rtol: number };
}

const FLASH: Impl = {
  forward: (_s, out, lse, q, k, v, c) => attentionForwardCuda(out, lse, q, k, v, c, c.opts),
  backward: (_s, dq, dk, dv, dout, q, k, v, out, lse, c) => attentionBackwardCuda(dq, dk, dv, dout, q, k, v, out, lse, c, c.opts),
  fwdTol: FWD_TOL,
  bwdTol: BWD_TOL,
};

/** The GEMM path, with scratch for chunks of `rows` query rows (scoreBytes chosen to give that). */
function gemmImpl(precision: 'f32' | 'bf16', rows: number): Impl {
  const scratch = (s: Scope, c: Case): AttentionGemmScratch => {
    const e = precision === 'bf16' ? 2 : 4;
    const scoreBytes = rows * c.Hkv * Math.ceil(c.Tk / 8) * 8 * (8 + 2 * e);
    const sc = s.adopt(new AttentionGemmScratch(c, precision, { scoreBytes }));
    assert.equal(sc.chunk, Math.min(rows, c.Tq));
    return sc;
  };
  // bf16 GEMM inputs (8 significant bits) against the f64 twin: errors of a few bf16 ulps of the
  // O(1) values involved; a masking or indexing error is off by O(1)
  const loose = { atol: 3e-2, rtol: 3e-2 };
  return {
    forward: (s, out, lse, q, k, v, c) => attentionGemmForwardCuda(out, lse, q, k, v, c, c.opts ?? {}, scratch(s, c)),
    backward: (s, dq, dk, dv, dout, q, k, v, out, lse, c) =>
      attentionGemmBackwardCuda(dq, dk, dv, dout, q, k, v, out, lse, c, c.opts ?? {}, scratch(s, c)),
    fwdTol: precision === 'f32' ? FWD_TOL : loose,
    bwdTol: precision === 'f32' ? BWD_TOL : { atol: 6e-2, rtol: 3e-2 },
  };
}

/** The tensor-core kernels: bf16 products like the GEMM path in bf16, so its tolerances. */
const TC: Impl = {
  forward: (_s, out, lse, q, k, v, c) => attentionTcForwardCuda(out, lse, q, k, v, c, c.opts),
  backward: (s, dq, dk, dv, dout, q, k, v, out, lse, c) =>
    attentionTcBackwardCuda(dq, dk, dv, dout, q, k, v, out, lse, c, c.opts ?? {}, s.adopt(new AttentionTcScratch(c))),
  fwdTol: gemmImpl('bf16', 1).fwdTol,
  bwdTol: gemmImpl('bf16', 1).bwdTol,
};

/** Forward and backward on the device and with the twin, from the same inputs and pre-filled gradients. */
function compareWithTwin(s: Scope, c: Case, seed: number, impl: Impl = FLASH): void {
  const rng = new Rng(seed);
  const qShape = [c.B, c.Tq, c.H, c.D], kShape = [c.B, c.Tk, c.Hkv, c.D];
  const q = randn(rng, qShape), k = randn(rng, kShape), v = randn(rng, kShape), dout = randn(rng, qShape);
  const dq0 = randn(rng, qShape), dk0 = randn(rng, kShape), dv0 = randn(rng, kShape);
  const what = label(c);

  const out = Tensor.zeros(qShape), lse = Tensor.zeros([c.B, c.H, c.Tq]);
  attentionForwardRef(out, lse, q, k, v, c.opts);
  const [dq, dk, dv] = [dq0.clone(), dk0.clone(), dv0.clone()];
  attentionBackwardRef(dq, dk, dv, dout, q, k, v, out, lse, c.opts);

  const gq = s.upload(q.f32), gk = s.upload(k.f32), gv = s.upload(v.f32), gdout = s.upload(dout.f32);
  const gout = s.alloc('f32', out.size), glse = s.alloc('f32', lse.size);
  impl.forward(s, gout, glse, gq, gk, gv, c);
  const gotOut = downloadDevice<Float32Array>(gout);
  assertClose(gotOut, out.f32, { ...impl.fwdTol, what: `${what} out` });
  assertClose(downloadDevice<Float32Array>(glse), lse.f32, { ...impl.fwdTol, what: `${what} lse` });

  const gdq = s.upload(dq0.f32), gdk = s.upload(dk0.f32), gdv = s.upload(dv0.f32);
  impl.backward(s, gdq, gdk, gdv, gdout, gq, gk, gv, gout, glse, c);
  assertClose(downloadDevice<Float32Array>(gdq), dq.f32, { ...impl.bwdTol, what: `${what} dq` });
  assertClose(downloadDevice<Float32Array>(gdk), dk.f32, { ...impl.bwdTol, what: `${what} dk` });
  assertClose(downloadDevice<Float32Array>(gdv), dv.f32, { ...impl.bwdTol, what: `${what} dv` });
}

// (H, Hkv, B, window): GQA ratio 1 and 3 (and 3 with two kv heads), window on and off.
const VARIANTS: [number, number, number, number | null][] = [
  [2, 2, 2, null],
  [3, 1, 1, 5],
  [6, 2, 1, null],
  [1, 1, 2, 3],
];

for (const D of [16, 32, 64]) {
  testOnBackends(`attention D=${D}: T 1, 7, 33, 65; GQA 1 and 3; window on and off; matches the twin`, (s) => {
    let seed = 1000 * D;
    for (const T of [1, 7, 33, 65]) {
      for (const [H, Hkv, B, window] of VARIANTS) compareWithTwin(s, { B, Tq: T, Tk: T, H, Hkv, D, opts: { window } }, seed++);
    }
  });
}

testOnBackends('attention: odd head dims and the D <= 128 / 256 kernels (several tiles each)', (s) => {
  let seed = 7;
  for (const D of [2, 17, 33]) compareWithTwin(s, { B: 1, Tq: 19, Tk: 19, H: 3, Hkv: 1, D }, seed++);
  compareWithTwin(s, { B: 1, Tq: 40, Tk: 40, H: 2, Hkv: 1, D: 100, opts: { window: 9 } }, seed++);
  compareWithTwin(s, { B: 2, Tq: 33, Tk: 33, H: 3, Hkv: 3, D: 128 }, seed++);
  compareWithTwin(s, { B: 1, Tq: 21, Tk: 21, H: 2, Hkv: 1, D: 256 }, seed++);
});

testOnBackends('attention: window sizes 1, exactly T and beyond T; decoding with Tq < Tk', (s) => {
  let seed = 70;
  for (const window of [1, 33, 64]) compareWithTwin(s, { B: 1, Tq: 33, Tk: 33, H: 3, Hkv: 1, D: 16, opts: { window } }, seed++);
  const cases: Case[] = [
    { B: 1, Tq: 1, Tk: 17, H: 4, Hkv: 2, D: 8 },
    { B: 2, Tq: 5, Tk: 65, H: 6, Hkv: 2, D: 32 },
    { B: 1, Tq: 3, Tk: 70, H: 3, Hkv: 3, D: 16, opts: { window: 40 } },
    { B: 1, Tq: 17, Tk: 80, H: 4, Hkv: 2, D: 8, opts: { qOffset: 30 } },
    { B: 1, Tq: 40, Tk: 90, H: 2, Hkv: 2, D: 8, opts: { qOffset: 0, window: 5 } },
  ];
  for (const c of cases) compareWithTwin(s, c, seed++);
});

for (const precision of ['f32', 'bf16'] as const) {
  testOnBackends(`attention through GEMMs (${precision}): chunks of 1, 5 and all rows; GQA; windows; decoding; matches the twin`, (s) => {
    let seed = precision === 'f32' ? 500 : 600;
    for (const rows of [1, 5, 1000]) {
      for (const T of [1, 7, 33]) {
        for (const [H, Hkv, B, window] of VARIANTS) compareWithTwin(s, { B, Tq: T, Tk: T, H, Hkv, D: 16, opts: { window } }, seed++, gemmImpl(precision, rows));
      }
    }
    const cases: Case[] = [
      { B: 2, Tq: 5, Tk: 65, H: 6, Hkv: 2, D: 32 },
      { B: 1, Tq: 17, Tk: 80, H: 4, Hkv: 2, D: 8, opts: { qOffset: 30 } },
      { B: 1, Tq: 40, Tk: 90, H: 2, Hkv: 2, D: 8, opts: { qOffset: 0, window: 5 } },
      { B: 1, Tq: 19, Tk: 19, H: 3, Hkv: 1, D: 17 },
    ];
    for (const c of cases) for (const rows of [3, 64]) compareWithTwin(s, c, seed++, gemmImpl(precision, rows));
  });
}

// Tiles of 64 query rows / 64 keys (32-row query tiles in dk/dv): T 1, 17, 64, 65 and 130 cover
// one partial tile, one whole, one plus a row, and three; windows cut tiles in the middle.
for (const D of [64, 128] as const) {
  testOnBackends(`attention on tensor cores D=${D}: T ${D === 64 ? '1, 17, 65, 130' : '17, 65'}; GQA 1 and 3; windows; decoding; matches the twin`, (s) => {
    let seed = 800 + D;
    for (const T of D === 64 ? [1, 17, 65, 130] : [17, 65]) {
      for (const [H, Hkv, B, window] of VARIANTS) compareWithTwin(s, { B, Tq: T, Tk: T, H, Hkv, D, opts: { window } }, seed++, TC);
    }
    const cases: Case[] = [
      { B: 1, Tq: 64, Tk: 64, H: 2, Hkv: 1, D, opts: { window: 70 } },
      { B: 2, Tq: 5, Tk: 70, H: 3, Hkv: 1, D },
      { B: 1, Tq: 17, Tk: 80, H: 2, Hkv: 2, D, opts: { qOffset: 30 } },
      { B: 1, Tq: 40, Tk: 90, H: 2, Hkv: 1, D, opts: { qOffset: 0, window: 5 } },
    ];
    for (const c of cases) compareWithTwin(s, c, seed++, TC);
    // out16: the bf16 rounding of out, bit for bit
    const c: Case = { B: 2, Tq: 70, Tk: 70, H: 3, Hkv: 1, D };
    const rng = new Rng(seed);
    const nq = c.B * c.Tq * c.H * D, nkv = c.B * c.Tk * c.Hkv * D;
    const q = s.upload(randn(rng, [nq]).f32), k = s.upload(randn(rng, [nkv]).f32), v = s.upload(randn(rng, [nkv]).f32);
    const out = s.alloc('f32', nq), out16 = s.alloc('bf16', nq), lse = s.alloc('f32', c.B * c.H * c.Tq);
    attentionTcForwardCuda(out, lse, q, k, v, c, {}, out16);
    const want = Uint16Array.from(downloadDevice<Float32Array>(out), (x) => f32ToBf16Ref(x));
    assertBitExact(downloadDevice<Uint16Array>(out16), want, `out16 D=${D}`);
    assert.throws(() => attentionTcForwardCuda(out, lse, q, k, v, c, {}, out), /attentionTcForwardCuda: out16: expected a bf16 device array, got f32/);
  });
}

testOnBackends('attention on tensor cores: other head dims and another scratch are refused', (s) => {
  assert.equal(attentionTcUnsupported({ B: 1, Tq: 3, Tk: 3, H: 2, Hkv: 1, D: 64 }), null);
  assert.match(attentionTcUnsupported({ B: 1, Tq: 3, Tk: 3, H: 2, Hkv: 1, D: 32 }) ?? '', /^head dim 32 \(the tensor-core kernels take 64 or 128\)$/);
  const c: AttentionShape = { B: 1, Tq: 3, Tk: 3, H: 2, Hkv: 1, D: 64 };
  const nq = 3 * 2 * 64, nkv = 3 * 64;
  const q = s.alloc('f32', nq), kv = s.alloc('f32', nkv), lse = s.alloc('f32', 6), out = s.alloc('f32', nq);
  const c32 = { ...c, D: 32 };
  assert.throws(() => attentionTcForwardCuda(out, lse, q, kv, kv, c32), /^RangeError: attentionTcForwardCuda: unsupported head dim 32/);
  assert.throws(() => attentionTcForwardCuda(out, s.alloc('f32', 5), q, kv, kv, c), /attentionTcForwardCuda: lse: expected 6 elements/);
  const other = s.adopt(new AttentionTcScratch({ ...c, Tq: 2, Tk: 2 }));
  const g = s.alloc('f32', nq), gk = s.alloc('f32', nkv), gv = s.alloc('f32', nkv);
  assert.throws(() => attentionTcBackwardCuda(g, gk, gv, q, q, kv, kv, out, lse, c, {}, other), /attentionTcBackwardCuda: the scratch was made for another shape/);
  const fwdOnly = s.adopt(new AttentionTcScratch(c, { training: false }));
  assert.throws(() => attentionTcBackwardCuda(g, gk, gv, q, q, kv, kv, out, lse, c, {}, fwdOnly), /attentionTcBackwardCuda: the scratch was made without the backward's buffers/);
  const sc = s.adopt(new AttentionTcScratch(c));
  assert.throws(() => attentionTcBackwardCuda(g, gk, gk, q, q, kv, kv, out, lse, c, {}, sc), /attentionTcBackwardCuda: dk overlaps dv/);
});

testOnBackends('attention through GEMMs: a scratch of another shape, or without the backward buffers, is refused', (s) => {
  const c: AttentionShape = { B: 1, Tq: 3, Tk: 3, H: 2, Hkv: 1, D: 4 };
  const q = s.alloc('f32', 24), kv = s.alloc('f32', 12), lse = s.alloc('f32', 6), out = s.alloc('f32', 24);
  const other = s.adopt(new AttentionGemmScratch({ ...c, Tq: 2, Tk: 2 }, 'f32'));
  assert.throws(() => attentionGemmForwardCuda(out, lse, q, kv, kv, c, {}, other), /attentionGemmForwardCuda: the scratch was made for another shape/);
  const fwdOnly = s.adopt(new AttentionGemmScratch(c, 'bf16', { training: false }));
  attentionGemmForwardCuda(out, lse, q, kv, kv, c, {}, fwdOnly);
  const g = s.alloc('f32', 24), gk = s.alloc('f32', 12), gv = s.alloc('f32', 12);
  assert.throws(() => attentionGemmBackwardCuda(g, gk, gv, q, q, kv, kv, out, lse, c, {}, fwdOnly), /without the backward's buffers/);
  assert.throws(() => attentionGemmForwardCuda(out, s.alloc('f32', 5), q, kv, kv, c, {}, fwdOnly), /attentionGemmForwardCuda: lse: expected 6 elements/);
});

testOnBackends('attention wrapper: argument errors name the op and argument', (s) => {
  const c: AttentionShape = { B: 1, Tq: 3, Tk: 3, H: 2, Hkv: 1, D: 4 };
  const q = s.alloc('f32', 24), kv = s.alloc('f32', 12), lse = s.alloc('f32', 6), out = s.alloc('f32', 24);
  assert.throws(() => attentionForwardCuda(out, lse, q, kv, kv, { ...c, H: 3, Hkv: 2 }), /attentionForwardCuda: q: 3 query heads is not a multiple of k's 2 kv heads/);
  assert.throws(() => attentionForwardCuda(out, lse, q, kv, kv, { ...c, Tq: 4 }), /Tq must be <= Tk/);
  assert.throws(() => attentionForwardCuda(out, lse, q, kv, kv, c, { window: 0 }), /attentionForwardCuda: window must be a positive integer/);
  assert.throws(() => attentionForwardCuda(out, lse, q, kv, kv, c, { qOffset: 1 }), /attentionForwardCuda: qOffset must be an integer in \[0, 0\]/);
  assert.throws(() => attentionForwardCuda(out, lse, q, kv, kv, { ...c, D: 300 }), /head dim D = 300 is above the largest supported/);
  assert.throws(() => attentionForwardCuda(out, s.alloc('f32', 5), q, kv, kv, c), /attentionForwardCuda: lse: expected 6 elements \(B=1, H=2, Tq=3\)/);
  assert.throws(() => attentionForwardCuda(q, lse, q, kv, kv, c), /attentionForwardCuda: out overlaps q/);
  const g = s.alloc('f32', 24), gk = s.alloc('f32', 12);
  assert.throws(() => attentionBackwardCuda(g, gk, gk, q, q, kv, kv, out, lse, c), /attentionBackwardCuda: dk overlaps dv/);
  assert.throws(() => attentionBackwardCuda(g, gk, s.alloc('i32', 12), q, q, kv, kv, out, lse, c), /attentionBackwardCuda: dv: expected a f32 device array/);
});

test('EQAT_CUDA_ATTENTION picks the attention path; another value is refused naming the variable', () => {
  const saved = process.env['EQAT_CUDA_ATTENTION'];
  try {
    delete process.env['EQAT_CUDA_ATTENTION'];
    assert.equal(attentionPathCuda(), 'gemm');
    process.env['EQAT_CUDA_ATTENTION'] = 'flash';
    assert.equal(attentionPathCuda(), 'flash');
    process.env['EQAT_CUDA_ATTENTION'] = 'tc';
    assert.equal(attentionPathCuda(), 'tc');
    process.env['EQAT_CUDA_ATTENTION'] = 'tensor';
    assert.throws(() => attentionPathCuda(), /^Error: EQAT_CUDA_ATTENTION=tensor: must be 'gemm', 'tc' or 'flash'$/);
  } finally {
    if (saved === undefined) delete process.env['EQAT_CUDA_ATTENTION'];
    else process.env['EQAT_CUDA_ATTENTION'] = saved;
  }
});

test('EQAT_CUDA_ATTENTION_SCORE_MIB sets the score scratch cap; a value that is not a positive number is refused naming the variable', () => {
  const saved = process.env['EQAT_CUDA_ATTENTION_SCORE_MIB'];
  try {
    delete process.env['EQAT_CUDA_ATTENTION_SCORE_MIB'];
    assert.equal(attentionScoreBytesCuda(), ATTENTION_SCORE_BYTES);
    process.env['EQAT_CUDA_ATTENTION_SCORE_MIB'] = '512';
    assert.equal(attentionScoreBytesCuda(), 512 * 2 ** 20);
    for (const bad of ['lots', '0', '-8', 'Infinity']) {
      process.env['EQAT_CUDA_ATTENTION_SCORE_MIB'] = bad;
      assert.throws(() => attentionScoreBytesCuda(), new RegExp(`^Error: EQAT_CUDA_ATTENTION_SCORE_MIB=${bad}: must be a positive number of MiB$`));
    }
  } finally {
    if (saved === undefined) delete process.env['EQAT_CUDA_ATTENTION_SCORE_MIB'];
    else process.env['EQAT_CUDA_ATTENTION_SCORE_MIB'] = saved;
  }
});
