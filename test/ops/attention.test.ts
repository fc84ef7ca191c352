// Causal grouped-query attention, one spec on every backend (test/ops/spec.ts): the CPU
// kernel and the CUDA flash kernels (the Backend's path without scratch) against the
// TypeScript twin on odd shapes (T 1 to 200, head dims 2 to 256, GQA ratios 1 to 3), sliding
// windows and decoding (Tq < Tk, qOffset): out, lse, and dq, dk, dv accumulated into zeroed or
// pre-filled gradients. The CUDA paths that need their own scratch, through their wrappers on
// the CUDA backends: the GEMM path (f32 and bf16, chunks of 1, 5, ... rows) and the
// tensor-core kernels (D 64 and 128, their bf16 copy of out), their scratch checks and the
// EQAT_CUDA_ATTENTION* knobs. The CPU op alone: windows of T or more, decoding rows against
// the full forward, lse by hand, accumulation, finite differences, causality, determinism
// across thread counts, the narrower instruction-set paths; argument errors of every wrapper.
//
// Error bounds: FWD_TOL / BWD_TOL for the CPU kernel, the flash kernels and the GEMM path in
// f32 (f32 dots against the twin's f64); the GEMM path in bf16 and the tensor-core kernels a
// few bf16 ulps of the O(1) values involved (gemmPath below).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { native, nativeFn } from '../../src/engine/native.js';
import { attentionBackward, attentionForward, type AttentionOptions } from '../../src/ops/attention.js';
import { attentionBackwardRef, attentionForwardRef } from '../../src/ops/ref/attention.js';
import { assertClose, checkGrad, randn } from '../util.js';
import { f32ToBf16Ref } from '../../src/engine/dtype.js';
import { downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { attentionBackwardCuda, attentionForwardCuda, type AttentionShape } from '../../src/ops/cuda/attention.js';
import { ATTENTION_SCORE_BYTES, AttentionGemmScratch, attentionGemmBackwardCuda, attentionGemmForwardCuda, attentionPathCuda, attentionScoreBytesCuda } from '../../src/ops/cuda/attention-gemm.js';
import { AttentionTcScratch, attentionTcBackwardCuda, attentionTcForwardCuda, attentionTcUnsupported } from '../../src/ops/cuda/attention-tc.js';
import { assertBitExact, testOnBackends } from '../cuda/backends.js';
import { forEachBackend, forEachCudaBackend, type OnBackend } from './spec.js';

interface Case extends AttentionShape {
  opts?: AttentionOptions;
}

interface Inputs {
  q: Tensor; // (B, Tq, H, D)
  k: Tensor; // (B, Tk, Hkv, D)
  v: Tensor; // (B, Tk, Hkv, D)
  dout: Tensor; // (B, Tq, H, D)
}

interface Results {
  out: Tensor; // (B, Tq, H, D)
  lse: Tensor; // (B, H, Tq)
  dq: Tensor;
  dk: Tensor;
  dv: Tensor;
}

const FWD_TOL = { atol: 1e-5, rtol: 1e-4 };
const BWD_TOL = { atol: 2e-5, rtol: 1e-4 };
// Central differences in f32 with eps 1e-2 agree with the analytic gradient to ~6e-5 here.
const FD = { eps: 1e-2, samples: 30, atol: 3e-4, rtol: 1e-3 };

function label(c: Case): string {
  return `B=${c.B} Tq=${c.Tq} Tk=${c.Tk} H=${c.H}/${c.Hkv} D=${c.D} ${JSON.stringify(c.opts ?? {})}`;
}

function inputs(rng: Rng, c: Case): Inputs {
  return {
    q: randn(rng, [c.B, c.Tq, c.H, c.D]),
    k: randn(rng, [c.B, c.Tk, c.Hkv, c.D]),
    v: randn(rng, [c.B, c.Tk, c.Hkv, c.D]),
    dout: randn(rng, [c.B, c.Tq, c.H, c.D]),
  };
}

/** Forward then backward (into zeroed gradients, or copies of `prefill`) with one implementation. */
function run(impl: 'native' | 'ref', c: Case, x: Inputs, prefill?: { dq: Tensor; dk: Tensor; dv: Tensor }): Results {
  const fwd = impl === 'native' ? attentionForward : attentionForwardRef;
  const bwd = impl === 'native' ? attentionBackward : attentionBackwardRef;
  const out = Tensor.zeros(x.q.shape);
  const lse = Tensor.zeros([c.B, c.H, c.Tq]);
  fwd(out, lse, x.q, x.k, x.v, c.opts);
  const dq = prefill ? prefill.dq.clone() : Tensor.zeros(x.q.shape);
  const dk = prefill ? prefill.dk.clone() : Tensor.zeros(x.k.shape);
  const dv = prefill ? prefill.dv.clone() : Tensor.zeros(x.v.shape);
  bwd(dq, dk, dv, x.dout, x.q, x.k, x.v, out, lse, c.opts);
  return { out, lse, dq, dk, dv };
}

/** One attention path on a backend: forward and accumulating backward over its arrays. */
interface Path {
  forward(b: OnBackend, out: unknown, lse: unknown, q: unknown, k: unknown, v: unknown, c: Case): void;
  backward(b: OnBackend, dq: unknown, dk: unknown, dv: unknown, dout: unknown, q: unknown, k: unknown, v: unknown, out: unknown, lse: unknown, c: Case): void;
  fwdTol: { atol: number; rtol: number };
  bwdTol: { atol: number; rtol: number };
}

/** The Backend's attention without scratch: the CPU kernel, or the CUDA flash kernels. */
const NO_SCRATCH: Path = {
  forward: (b, out, lse, q, k, v, c) => b.be.attentionForward(out, lse, q, k, v, c, c.opts ?? {}, null, null),
  backward: (b, dq, dk, dv, dout, q, k, v, out, lse, c) => b.be.attentionBackward(dq, dk, dv, dout, q, k, v, out, lse, c, c.opts ?? {}, null),
  fwdTol: FWD_TOL,
  bwdTol: BWD_TOL,
};

/**
 * Forward and backward on the backend and with the twin from the same inputs; gradients start
 * at zero, or (prefill) at random values drawn after the inputs.
 */
function compareWithTwin(b: OnBackend, c: Case, seed: number, { prefill = false, path = NO_SCRATCH }: { prefill?: boolean; path?: Path } = {}): void {
  const rng = new Rng(seed);
  const x = inputs(rng, c);
  const [dq0, dk0, dv0] = prefill ? [randn(rng, x.q.shape), randn(rng, x.k.shape), randn(rng, x.v.shape)] : [Tensor.zeros(x.q.shape), Tensor.zeros(x.k.shape), Tensor.zeros(x.v.shape)];
  const want = run('ref', c, x, { dq: dq0, dk: dk0, dv: dv0 });
  const what = label(c);

  const gq = b.upload(x.q.f32), gk = b.upload(x.k.f32), gv = b.upload(x.v.f32), gdout = b.upload(x.dout.f32);
  const gout = b.alloc('f32', x.q.size), glse = b.alloc('f32', want.lse.size);
  path.forward(b, gout, glse, gq, gk, gv, c);
  assertClose(b.download(gout), want.out.f32, { ...path.fwdTol, what: `${what} out` });
  assertClose(b.download(glse), want.lse.f32, { ...path.fwdTol, what: `${what} lse` });
  const gdq = b.upload(dq0.f32), gdk = b.upload(dk0.f32), gdv = b.upload(dv0.f32);
  path.backward(b, gdq, gdk, gdv, gdout, gq, gk, gv, gout, glse, c);
  assertClose(b.download(gdq), want.dq.f32, { ...path.bwdTol, what: `${what} dq` });
  assertClose(b.download(gdk), want.dk.f32, { ...path.bwdTol, what: `${what} dk` });
  assertClose(b.download(gdv), want.dv.f32, { ...path.bwdTol, what: `${what} dv` });
}

const HEADS: [number, number][] = [
  [1, 1],
  [4, 2],
  [6, 2],
  [3, 3],
];

for (const T of [1, 3, 17, 65]) {
  for (const D of [2, 8, 32, 64]) {
    forEachBackend(`attention matches the twin: T=${T} D=${D}, heads ${HEADS.map(([h, g]) => `${h}/${g}`).join(' ')}, B 1 and 2`, (b) => {
      let seed = 100 * T + D;
      for (const [H, Hkv] of HEADS) for (const B of [1, 2]) compareWithTwin(b, { B, Tq: T, Tk: T, H, Hkv, D }, seed++);
    });
  }
}

forEachBackend('attention matches the twin across several query and key tiles (T=150, 200)', (b) => {
  compareWithTwin(b, { B: 1, Tq: 150, Tk: 150, H: 4, Hkv: 2, D: 17 }, 1);
  compareWithTwin(b, { B: 2, Tq: 200, Tk: 200, H: 2, Hkv: 1, D: 33 }, 2);
});

forEachBackend('attention sliding windows: 1, 5, exactly T and larger than T', (b) => {
  let seed = 10;
  for (const T of [17, 65, 150]) {
    for (const window of [1, 5, 70, T, T + 31]) {
      compareWithTwin(b, { B: 2, Tq: T, Tk: T, H: 6, Hkv: 2, D: 9, opts: { window } }, seed++);
    }
  }
});

forEachBackend('attention decoding: fewer queries than keys (Tq < Tk), default and explicit qOffset', (b) => {
  let seed = 20;
  const cases: Case[] = [
    { B: 1, Tq: 1, Tk: 17, H: 4, Hkv: 2, D: 8 },
    { B: 2, Tq: 5, Tk: 65, H: 6, Hkv: 2, D: 32 },
    { B: 2, Tq: 3, Tk: 130, H: 3, Hkv: 3, D: 16, opts: { window: 40 } },
    { B: 1, Tq: 17, Tk: 80, H: 4, Hkv: 2, D: 8, opts: { qOffset: 30 } },
    { B: 1, Tq: 70, Tk: 140, H: 2, Hkv: 2, D: 8, opts: { qOffset: 0, window: 5 } },
  ];
  for (const c of cases) compareWithTwin(b, c, seed++);
});

// (H, Hkv, B, window): GQA ratio 1 and 3 (and 3 with two kv heads), window on and off.
const VARIANTS: [number, number, number, number | null][] = [
  [2, 2, 2, null],
  [3, 1, 1, 5],
  [6, 2, 1, null],
  [1, 1, 2, 3],
];

for (const D of [16, 32, 64]) {
  forEachBackend(`attention D=${D}: T 1, 7, 33, 65; GQA 1 and 3; window on and off; into pre-filled gradients; matches the twin`, (b) => {
    let seed = 1000 * D;
    for (const T of [1, 7, 33, 65]) {
      for (const [H, Hkv, B, window] of VARIANTS) compareWithTwin(b, { B, Tq: T, Tk: T, H, Hkv, D, opts: { window } }, seed++, { prefill: true });
    }
  });
}

forEachBackend('attention: odd head dims and the D <= 128 / 256 kernels (several tiles each), into pre-filled gradients', (b) => {
  let seed = 7;
  for (const D of [2, 17, 33]) compareWithTwin(b, { B: 1, Tq: 19, Tk: 19, H: 3, Hkv: 1, D }, seed++, { prefill: true });
  compareWithTwin(b, { B: 1, Tq: 40, Tk: 40, H: 2, Hkv: 1, D: 100, opts: { window: 9 } }, seed++, { prefill: true });
  compareWithTwin(b, { B: 2, Tq: 33, Tk: 33, H: 3, Hkv: 3, D: 128 }, seed++, { prefill: true });
  compareWithTwin(b, { B: 1, Tq: 21, Tk: 21, H: 2, Hkv: 1, D: 256 }, seed++, { prefill: true });
});

forEachBackend('attention: window sizes 1, exactly T and beyond T; decoding with Tq < Tk; into pre-filled gradients', (b) => {
  let seed = 70;
  for (const window of [1, 33, 64]) compareWithTwin(b, { B: 1, Tq: 33, Tk: 33, H: 3, Hkv: 1, D: 16, opts: { window } }, seed++, { prefill: true });
  const cases: Case[] = [
    { B: 1, Tq: 1, Tk: 17, H: 4, Hkv: 2, D: 8 },
    { B: 2, Tq: 5, Tk: 65, H: 6, Hkv: 2, D: 32 },
    { B: 1, Tq: 3, Tk: 70, H: 3, Hkv: 3, D: 16, opts: { window: 40 } },
    { B: 1, Tq: 17, Tk: 80, H: 4, Hkv: 2, D: 8, opts: { qOffset: 30 } },
    { B: 1, Tq: 40, Tk: 90, H: 2, Hkv: 2, D: 8, opts: { qOffset: 0, window: 5 } },
  ];
  for (const c of cases) compareWithTwin(b, c, seed++, { prefill: true });
});

/** The GEMM path with scratch for chunks of `rows` query rows (scoreBytes chosen to give that). */
function gemmPath(precision: 'f32' | 'bf16', rows: number): Path {
  const scratch = (b: OnBackend, c: Case): AttentionGemmScratch => {
    const e = precision === 'bf16' ? 2 : 4;
    const scoreBytes = rows * c.Hkv * Math.ceil(c.Tk / 8) * 8 * (8 + 2 * e);
    const sc = new AttentionGemmScratch(c, precision, { scoreBytes });
    scratches.push(sc);
    assert.equal(sc.chunk, Math.min(rows, c.Tq));
    return sc;
  };
  // bf16 GEMM inputs (8 significant bits) against the f64 twin: errors of a few bf16 ulps of the
  // O(1) values involved; a masking or indexing error is off by O(1)
  const loose = { atol: 3e-2, rtol: 3e-2 };
  const d = (a: unknown) => a as DeviceArray;
  return {
    forward: (b, out, lse, q, k, v, c) => attentionGemmForwardCuda(d(out), d(lse), d(q), d(k), d(v), c, c.opts ?? {}, scratch(b, c)),
    backward: (b, dq, dk, dv, dout, q, k, v, out, lse, c) =>
      attentionGemmBackwardCuda(d(dq), d(dk), d(dv), d(dout), d(q), d(k), d(v), d(out), d(lse), c, c.opts ?? {}, scratch(b, c)),
    fwdTol: precision === 'f32' ? FWD_TOL : loose,
    bwdTol: precision === 'f32' ? BWD_TOL : { atol: 6e-2, rtol: 3e-2 },
  };
}

/** The tensor-core kernels: bf16 products like the GEMM path in bf16, so its tolerances. */
const TC: Path = {
  forward: (_b, out, lse, q, k, v, c) => attentionTcForwardCuda(out as DeviceArray, lse as DeviceArray, q as DeviceArray, k as DeviceArray, v as DeviceArray, c, c.opts),
  backward: (_b, dq, dk, dv, dout, q, k, v, out, lse, c) => {
    const sc = new AttentionTcScratch(c);
    scratches.push(sc);
    const d = (a: unknown) => a as DeviceArray;
    attentionTcBackwardCuda(d(dq), d(dk), d(dv), d(dout), d(q), d(k), d(v), d(out), d(lse), c, c.opts ?? {}, sc);
  },
  fwdTol: gemmPath('bf16', 1).fwdTol,
  bwdTol: gemmPath('bf16', 1).bwdTol,
};

/** Scratch made by a path during one test, freed when it ends (onCuda). */
const scratches: { free(): void }[] = [];

function onCuda(name: string, body: (b: OnBackend) => void): void {
  forEachCudaBackend(name, (b) => {
    try {
      body(b);
    } finally {
      for (const sc of scratches.splice(0).reverse()) sc.free();
    }
  });
}

for (const precision of ['f32', 'bf16'] as const) {
  onCuda(`attention through GEMMs (${precision}): chunks of 1, 5 and all rows; GQA; windows; decoding; matches the twin`, (b) => {
    let seed = precision === 'f32' ? 500 : 600;
    for (const rows of [1, 5, 1000]) {
      for (const T of [1, 7, 33]) {
        for (const [H, Hkv, B, window] of VARIANTS) compareWithTwin(b, { B, Tq: T, Tk: T, H, Hkv, D: 16, opts: { window } }, seed++, { prefill: true, path: gemmPath(precision, rows) });
      }
    }
    const cases: Case[] = [
      { B: 2, Tq: 5, Tk: 65, H: 6, Hkv: 2, D: 32 },
      { B: 1, Tq: 17, Tk: 80, H: 4, Hkv: 2, D: 8, opts: { qOffset: 30 } },
      { B: 1, Tq: 40, Tk: 90, H: 2, Hkv: 2, D: 8, opts: { qOffset: 0, window: 5 } },
      { B: 1, Tq: 19, Tk: 19, H: 3, Hkv: 1, D: 17 },
    ];
    for (const c of cases) for (const rows of [3, 64]) compareWithTwin(b, c, seed++, { prefill: true, path: gemmPath(precision, rows) });
  });
}

// Tiles of 64 query rows / 64 keys (32-row query tiles in dk/dv): T 1, 17, 64, 65 and 130 cover
// one partial tile, one whole, one plus a row, and three; windows cut tiles in the middle.
for (const D of [64, 128] as const) {
  onCuda(`attention on tensor cores D=${D}: T ${D === 64 ? '1, 17, 65, 130' : '17, 65'}; GQA 1 and 3; windows; decoding; matches the twin`, (b) => {
    let seed = 800 + D;
    for (const T of D === 64 ? [1, 17, 65, 130] : [17, 65]) {
      for (const [H, Hkv, B, window] of VARIANTS) compareWithTwin(b, { B, Tq: T, Tk: T, H, Hkv, D, opts: { window } }, seed++, { prefill: true, path: TC });
    }
    const cases: Case[] = [
      { B: 1, Tq: 64, Tk: 64, H: 2, Hkv: 1, D, opts: { window: 70 } },
      { B: 2, Tq: 5, Tk: 70, H: 3, Hkv: 1, D },
      { B: 1, Tq: 17, Tk: 80, H: 2, Hkv: 2, D, opts: { qOffset: 30 } },
      { B: 1, Tq: 40, Tk: 90, H: 2, Hkv: 1, D, opts: { qOffset: 0, window: 5 } },
    ];
    for (const c of cases) compareWithTwin(b, c, seed++, { prefill: true, path: TC });
    // out16: the bf16 rounding of out, bit for bit
    const c: Case = { B: 2, Tq: 70, Tk: 70, H: 3, Hkv: 1, D };
    const rng = new Rng(seed);
    const nq = c.B * c.Tq * c.H * D, nkv = c.B * c.Tk * c.Hkv * D;
    const d = (a: unknown) => a as DeviceArray;
    const q = d(b.upload(randn(rng, [nq]).f32)), k = d(b.upload(randn(rng, [nkv]).f32)), v = d(b.upload(randn(rng, [nkv]).f32));
    const out = d(b.alloc('f32', nq)), out16 = d(b.alloc('bf16', nq)), lse = d(b.alloc('f32', c.B * c.H * c.Tq));
    attentionTcForwardCuda(out, lse, q, k, v, c, {}, out16);
    const want = Uint16Array.from(downloadDevice<Float32Array>(out), (x) => f32ToBf16Ref(x));
    assertBitExact(downloadDevice<Uint16Array>(out16), want, `out16 D=${D}`);
    assert.throws(() => attentionTcForwardCuda(out, lse, q, k, v, c, {}, out), /attentionTcForwardCuda: out16: expected a bf16 device array, got f32/);
  });
}

test('a window at least T long is full causal attention', () => {
  const c: Case = { B: 1, Tq: 33, Tk: 33, H: 2, Hkv: 1, D: 8 };
  const x = inputs(new Rng(5), c);
  const full = run('native', c, x);
  for (const window of [33, 34, 1000]) {
    const w = run('native', { ...c, opts: { window } }, x);
    assert.deepEqual(w.out.f32, full.out.f32, `window ${window}`);
    assert.deepEqual(w.dk.f32, full.dk.f32, `window ${window}`);
  }
});

test('decoding rows equal the matching rows of the full forward', () => {
  const rng = new Rng(21);
  const B = 2, Tk = 70, H = 4, Hkv = 2, D = 16;
  const k = randn(rng, [B, Tk, Hkv, D]);
  const v = randn(rng, [B, Tk, Hkv, D]);
  const qFull = randn(rng, [B, Tk, H, D]);
  for (const { Tq, qOffset, window } of [
    { Tq: 1, qOffset: Tk - 1, window: null },
    { Tq: 6, qOffset: Tk - 6, window: 9 },
    { Tq: 10, qOffset: 40, window: null },
  ]) {
    const outFull = Tensor.zeros(qFull.shape);
    const lseFull = Tensor.zeros([B, H, Tk]);
    attentionForward(outFull, lseFull, qFull, k, v, { window });
    // q rows [qOffset, qOffset + Tq) of every batch
    const q = Tensor.zeros([B, Tq, H, D]);
    const row = H * D;
    for (let b = 0; b < B; b++) q.f32.set(qFull.f32.subarray((b * Tk + qOffset) * row, (b * Tk + qOffset + Tq) * row), b * Tq * row);
    const out = Tensor.zeros(q.shape);
    const lse = Tensor.zeros([B, H, Tq]);
    attentionForward(out, lse, q, k, v, { window, qOffset });
    for (let b = 0; b < B; b++) {
      const want = outFull.f32.subarray((b * Tk + qOffset) * row, (b * Tk + qOffset + Tq) * row);
      assertClose(out.f32.subarray(b * Tq * row, (b + 1) * Tq * row), want, { ...FWD_TOL, what: `Tq=${Tq} out` });
      for (let h = 0; h < H; h++) {
        const wantLse = lseFull.f32.subarray((b * H + h) * Tk + qOffset, (b * H + h) * Tk + qOffset + Tq);
        assertClose(lse.f32.subarray((b * H + h) * Tq, (b * H + h + 1) * Tq), wantLse, { ...FWD_TOL, what: `Tq=${Tq} lse` });
      }
    }
  }
});

test('lse is the log-sum-exp of the scaled scores; one key gives out = v', () => {
  // T = 2, D = 2, one head: row 0 sees key 0 only, row 1 sees keys 0 and 1.
  const q = Tensor.fromF32(new Float32Array([1, 2, -1, 0.5]), [1, 2, 1, 2]);
  const k = Tensor.fromF32(new Float32Array([0.5, -1, 2, 1]), [1, 2, 1, 2]);
  const v = Tensor.fromF32(new Float32Array([3, 4, -2, 6]), [1, 2, 1, 2]);
  const out = Tensor.zeros([1, 2, 1, 2]);
  const lse = Tensor.zeros([1, 1, 2]);
  attentionForward(out, lse, q, k, v);
  const s = Math.SQRT1_2;
  const s00 = (1 * 0.5 + 2 * -1) * s;
  const s10 = (-1 * 0.5 + 0.5 * -1) * s;
  const s11 = (-1 * 2 + 0.5 * 1) * s;
  const lse1 = Math.log(Math.exp(s10) + Math.exp(s11));
  assertClose(lse.f32, [s00, lse1], { atol: 1e-6, rtol: 1e-6, what: 'lse' });
  const p0 = Math.exp(s10 - lse1);
  const p1 = Math.exp(s11 - lse1);
  assertClose(out.f32, [3, 4, p0 * 3 + p1 * -2, p0 * 4 + p1 * 6], { atol: 1e-6, rtol: 1e-6, what: 'out' });
});

test('backward accumulates into pre-filled dq, dk, dv', () => {
  const rng = new Rng(30);
  for (const c of [
    { B: 2, Tq: 17, Tk: 17, H: 6, Hkv: 2, D: 8 },
    { B: 1, Tq: 65, Tk: 65, H: 4, Hkv: 2, D: 32, opts: { window: 5 } },
    { B: 1, Tq: 3, Tk: 9, H: 2, Hkv: 1, D: 8, opts: { qOffset: 2 } },
  ] as Case[]) {
    const x = inputs(rng, c);
    const prefill = { dq: randn(rng, x.q.shape), dk: randn(rng, x.k.shape), dv: randn(rng, x.v.shape) };
    const fresh = run('native', c, x);
    const acc = run('native', c, x, prefill);
    const plus = (a: Tensor, b: Tensor) => a.f32.map((y, i) => y + b.f32[i]!);
    assertClose(acc.dq.f32, plus(prefill.dq, fresh.dq), { atol: 1e-6, rtol: 1e-6, what: `${label(c)} dq` });
    assertClose(acc.dk.f32, plus(prefill.dk, fresh.dk), { atol: 1e-6, rtol: 1e-6, what: `${label(c)} dk` });
    assertClose(acc.dv.f32, plus(prefill.dv, fresh.dv), { atol: 1e-6, rtol: 1e-6, what: `${label(c)} dv` });
    // the twin accumulates the same way
    const ref = run('ref', c, x, prefill);
    assertClose(acc.dk.f32, ref.dk.f32, { ...BWD_TOL, what: `${label(c)} dk vs twin` });
  }
});

test('backward matches finite differences of sum(out * R) for q, k and v', () => {
  const rng = new Rng(40);
  for (const c of [
    { B: 2, Tq: 7, Tk: 7, H: 4, Hkv: 2, D: 8 },
    { B: 1, Tq: 9, Tk: 9, H: 3, Hkv: 1, D: 5, opts: { window: 3 } },
    { B: 1, Tq: 3, Tk: 8, H: 2, Hkv: 2, D: 4 },
  ] as Case[]) {
    const x = inputs(rng, c);
    const R = x.dout; // sum(out * R) has gradient R with respect to out
    const out = Tensor.zeros(x.q.shape);
    const lse = Tensor.zeros([c.B, c.H, c.Tq]);
    const loss = (): number => {
      attentionForward(out, lse, x.q, x.k, x.v, c.opts);
      let s = 0;
      for (let i = 0; i < out.size; i++) s += out.f32[i]! * R.f32[i]!;
      return s;
    };
    loss();
    const dq = Tensor.zeros(x.q.shape);
    const dk = Tensor.zeros(x.k.shape);
    const dv = Tensor.zeros(x.v.shape);
    attentionBackward(dq, dk, dv, R, x.q, x.k, x.v, out, lse, c.opts);
    checkGrad(loss, x.q.f32, dq.f32, { ...FD, what: `${label(c)} dq` });
    checkGrad(loss, x.k.f32, dk.f32, { ...FD, what: `${label(c)} dk` });
    checkGrad(loss, x.v.f32, dv.f32, { ...FD, what: `${label(c)} dv` });
  }
});

test('causality: changing a future key/value leaves earlier outputs unchanged; windows forget old keys', () => {
  const rng = new Rng(50);
  const B = 1, T = 150, H = 4, Hkv = 2, D = 16;
  const row = H * D;
  for (const window of [null, 20]) {
    for (const p of [0, 40, 64, 149]) {
      const x = inputs(rng, { B, Tq: T, Tk: T, H, Hkv, D });
      const out0 = Tensor.zeros(x.q.shape);
      attentionForward(out0, Tensor.zeros([B, H, T]), x.q, x.k, x.v, { window });
      for (let i = 0; i < Hkv * D; i++) {
        x.k.f32[p * Hkv * D + i] = 5 * rng.normal();
        x.v.f32[p * Hkv * D + i] = 5 * rng.normal();
      }
      const out1 = Tensor.zeros(x.q.shape);
      attentionForward(out1, Tensor.zeros([B, H, T]), x.q, x.k, x.v, { window });
      for (let t = 0; t < T; t++) {
        const a = out0.f32.subarray(t * row, (t + 1) * row);
        const b = out1.f32.subarray(t * row, (t + 1) * row);
        const sees = t >= p && (window === null || t - window < p);
        if (sees) assert.notDeepEqual(b, a, `window ${window}: row ${t} must see key ${p}`);
        else assert.deepEqual(b, a, `window ${window}: row ${t} must not see key ${p}`);
      }
    }
  }
});

/** Module URLs of the compiled sources, for scripts run in a child process. */
function moduleUrls(): Record<string, string> {
  const url = (p: string) => new URL(p, import.meta.url).href;
  return {
    ops: url('../../src/ops/attention.js'),
    ref: url('../../src/ops/ref/attention.js'),
    util: url('../util.js'),
    rng: url('../../src/engine/random.js'),
    tensor: url('../../src/engine/tensor.js'),
  };
}

/** Runs an ES module script in a fresh node process with extra environment; returns stdout. */
function runChild(script: string, env: Record<string, string>): string {
  const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
    env: { ...process.env, ...env },
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, `child with ${JSON.stringify(env)} failed: ${r.stderr}`);
  return r.stdout;
}

// The thread count is fixed per process here (EQAT_THREADS), so each count runs in a child.
test('results do not depend on the thread count (bitwise)', () => {
  const u = moduleUrls();
  const script = `
    import { attentionForward, attentionBackward } from '${u.ops}';
    import { randn } from '${u.util}';
    import { Rng } from '${u.rng}';
    import { Tensor } from '${u.tensor}';
    const rng = new Rng(60);
    const [B, T, H, Hkv, D] = [2, 130, 6, 2, 24];
    const q = randn(rng, [B, T, H, D]), k = randn(rng, [B, T, Hkv, D]), v = randn(rng, [B, T, Hkv, D]);
    const dout = randn(rng, [B, T, H, D]);
    const out = Tensor.zeros(q.shape), lse = Tensor.zeros([B, H, T]);
    const dq = Tensor.zeros(q.shape), dk = Tensor.zeros(k.shape), dv = Tensor.zeros(v.shape);
    attentionForward(out, lse, q, k, v, { window: 50 });
    attentionBackward(dq, dk, dv, dout, q, k, v, out, lse, { window: 50 });
    const hash = (a) => {
      let h = 0x811c9dc5;
      for (const byte of new Uint8Array(a.buffer, a.byteOffset, a.byteLength)) h = Math.imul(h ^ byte, 0x01000193) >>> 0;
      return h.toString(16);
    };
    console.log([out, lse, dq, dk, dv].map((t) => hash(t.f32)).join(' '));
  `;
  const results = ['1', '2', '3'].map((n) => runChild(script, { EQAT_THREADS: n }).trim());
  assert.equal(results[1], results[0], '2 threads vs 1');
  assert.equal(results[2], results[0], '3 threads vs 1');
});

test('narrower instruction-set paths (EQAT_ISA) match the twin', () => {
  const info = native().cpuInfo();
  const narrower = info.avx512 ? ['avx2', 'scalar'] : info.avx2 ? ['scalar'] : [];
  const u = moduleUrls();
  const script = `
    import { attentionForward, attentionBackward } from '${u.ops}';
    import { attentionForwardRef, attentionBackwardRef } from '${u.ref}';
    import { assertClose, randn } from '${u.util}';
    import { Rng } from '${u.rng}';
    import { Tensor } from '${u.tensor}';
    const rng = new Rng(70);
    for (const [B, Tq, Tk, H, Hkv, D, window] of [[2, 65, 65, 6, 2, 17, null], [1, 130, 130, 4, 2, 64, 50], [2, 3, 70, 3, 3, 8, null]]) {
      const q = randn(rng, [B, Tq, H, D]), k = randn(rng, [B, Tk, Hkv, D]), v = randn(rng, [B, Tk, Hkv, D]);
      const dout = randn(rng, [B, Tq, H, D]);
      const res = [];
      for (const [fwd, bwd] of [[attentionForward, attentionBackward], [attentionForwardRef, attentionBackwardRef]]) {
        const out = Tensor.zeros(q.shape), lse = Tensor.zeros([B, H, Tq]);
        const dq = Tensor.zeros(q.shape), dk = Tensor.zeros(k.shape), dv = Tensor.zeros(v.shape);
        fwd(out, lse, q, k, v, { window });
        bwd(dq, dk, dv, dout, q, k, v, out, lse, { window });
        res.push([out, lse, dq, dk, dv]);
      }
      res[0].forEach((t, i) => assertClose(t.f32, res[1][i].f32, { atol: ${BWD_TOL.atol}, rtol: ${BWD_TOL.rtol}, what: 'output ' + i }));
    }
  `;
  for (const isa of narrower) runChild(script, { EQAT_ISA: isa });
});

test('argument errors name the op and the argument', () => {
  const z = (...shape: number[]) => Tensor.zeros(shape);
  const fwd = (q: Tensor, k: Tensor, v: Tensor, opts?: AttentionOptions, out?: Tensor, lse?: Tensor) =>
    attentionForward(out ?? z(...q.shape), lse ?? z(q.dim(0), q.dim(2), q.dim(1)), q, k, v, opts);
  assert.throws(() => fwd(z(1, 4, 3, 8), z(1, 4, 2, 8), z(1, 4, 2, 8)), /attentionForward: q: 3 query heads is not a multiple of k's 2/);
  assert.throws(() => fwd(z(1, 4, 4, 8), z(1, 4, 2, 4), z(1, 4, 2, 4)), /attentionForward: k: head dim 4 does not match q's head dim 8/);
  assert.throws(() => fwd(z(1, 4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 4)), /attentionForward: v: expected shape \[1, 4, 2, 8\]/);
  assert.throws(() => fwd(z(2, 4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8)), /attentionForward: k: batch 1 does not match/);
  assert.throws(() => fwd(z(1, 4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), {}, z(1, 4, 4, 7)), /attentionForward: out: expected shape/);
  assert.throws(() => fwd(z(1, 4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), {}, undefined, z(1, 3, 4)), /attentionForward: lse: expected shape \[1, 4, 4\], got \[1, 3, 4\]/);
  assert.throws(() => fwd(z(1, 5, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8)), /attentionForward: q: 5 query rows but only 4 keys/);
  assert.throws(() => fwd(z(4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8)), /attentionForward: q: expected rank 4/);
  assert.throws(() => fwd(z(1, 4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), { window: 0 }), /attentionForward: window must be a positive integer/);
  assert.throws(() => fwd(z(1, 4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), { window: 2.5 }), /attentionForward: window/);
  assert.throws(() => fwd(z(1, 2, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), { qOffset: 3 }), /attentionForward: qOffset must be an integer in \[0, 2\]/);
  assert.throws(() => fwd(z(1, 2, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), { qOffset: -1 }), /attentionForward: qOffset/);
  assert.throws(() => fwd(z(1, 4, 4, 8), z(1, 4, 2, 8), new Tensor([1, 4, 2, 8], 'i32', new Int32Array(64))), /attentionForward: v: expected dtype f32/);

  const q = z(1, 4, 4, 8), k = z(1, 4, 2, 8), v = z(1, 4, 2, 8), out = z(1, 4, 4, 8), lse = z(1, 4, 4);
  assert.throws(() => attentionBackward(z(1, 4, 4, 8), z(1, 4, 4, 8), z(1, 4, 2, 8), q, q, k, v, out, lse), /attentionBackward: dk: expected shape \[1, 4, 2, 8\]/);
  assert.throws(() => attentionBackward(z(1, 4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), z(1, 4, 4, 2), q, k, v, out, lse), /attentionBackward: dout/);
  assert.throws(() => attentionBackward(z(1, 4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), q, q, k, v, out, z(1, 4, 3)), /attentionBackward: lse/);
  assert.throws(() => attentionBackward(z(1, 4, 4, 8), z(1, 4, 2, 8), z(1, 4, 2, 8), q, z(1, 4, 3, 8), k, v, out, lse), /attentionBackward: q: 3 query heads/);

  // The native entry points re-check what they are given.
  const f = nativeFn<(...args: unknown[]) => void>('attentionForward');
  const buf = (n: number) => new Float32Array(n);
  assert.throws(() => f(buf(128), buf(16), buf(128), buf(64), buf(64), 1, 4, 4, 3, 2, 8, 0, 0), /attentionForward: argument 'H' \(3\) must be a multiple of 'Hkv' \(2\)/);
  assert.throws(() => f(buf(128), buf(16), buf(128), buf(63), buf(64), 1, 4, 4, 4, 2, 8, 0, 0), /attentionForward: argument 'k' has 63 elements, needs 64/);
  assert.throws(() => f(buf(128), buf(16), buf(128), buf(64), buf(64), 1, 4, 4, 4, 2, 8, 0, 1), /attentionForward: argument 'qOffset'/);
  const b = nativeFn<(...args: unknown[]) => void>('attentionBackward');
  assert.throws(() => b(buf(128), buf(64), buf(64), buf(128), buf(128), buf(64), buf(64), buf(128), buf(15), 1, 4, 4, 4, 2, 8, 0, 0), /attentionBackward: argument 'lse' has 15 elements, needs 16/);
});

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
