// The decoder block on CUDA (src/model/block-cuda.ts) against the CPU block, forward and
// backward, for every variant of the family (GQA, q/k/v and o/MLP biases, q/k norm, sliding
// window), on the backends of backends.ts. The CPU block is itself checked against finite
// differences (test/model/block.test.ts), so agreement here checks the CUDA composition.
// Decoding over a device kv cache (a prompt chunk, then one position at a time) is checked
// against the CPU block run on the whole sequence.
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { downloadDevice, type DeviceArray } from '../../src/engine/cuda.js';
import { allocBlockParams, blockBackward, blockForward, BlockArena, BlockWorkspace, BLOCK_PARAM_NAMES, downloadBlockParams, uploadBlockParams, type KvCache } from '../../src/model/block.js';
import { cudaBackend } from '../../src/backend/cuda.js';
import { cpuBackend } from '../../src/backend/cpu.js';
import { ropeTables } from '../../src/model/rope.js';
import { assertClose, randn } from '../util.js';
import { BLOCK_VARIANTS, randomBlockParams, tinyConfig } from '../model/tiny-config.js';
import { testOnBackends } from './backends.js';

for (const [name, over] of BLOCK_VARIANTS) {
  testOnBackends(`block forward and backward match the CPU block: ${name}`, (s) => {
    // T = 33 crosses the attention kernels' tiles; D = 6 and C = 12 are far from any tile size
    const cfg = tinyConfig(over);
    const rng = new Rng(21);
    const B = 2, T = 33, C = cfg.hiddenSize;
    const { params: p } = allocBlockParams(cfg);
    const { params: g } = allocBlockParams(cfg);
    for (const k of BLOCK_PARAM_NAMES) {
      const t = p[k];
      if (!t) continue;
      if (k.endsWith('Norm')) rng.fillUniform(t.f32, 0.5, 1.5);
      else rng.fillNormal(t.f32, 0.3);
      rng.fillNormal(g[k]!.f32, 0.1); // gradients accumulate: start from non-zero values
    }
    const ws = new BlockWorkspace(cpuBackend, cfg, B, T);
    const x = randn(rng, [B, T, C]), dy = randn(rng, [B, T, C]);
    const y = Tensor.zeros([B, T, C]), dx = Tensor.zeros([B, T, C]);
    const g0 = allocBlockParams(cfg).params;
    for (const k of BLOCK_PARAM_NAMES) if (g[k]) g0[k]!.f32.set(g[k]!.f32);
    blockForward(cfg, p, ws, x, y);
    blockBackward(cfg, p, g, ws, x, dy, dx);

    const dp = new BlockArena(cudaBackend, cfg), dg = new BlockArena(cudaBackend, cfg);
    const dws = new BlockWorkspace(cudaBackend, cfg, B, T);
    try {
      uploadBlockParams(cudaBackend, dp.params, p);
      uploadBlockParams(cudaBackend, dg.params, g0);
      const dxd = s.upload(x.f32), dyd = s.alloc('f32', x.size), ddy = s.upload(dy.f32), ddx = s.alloc('f32', x.size);
      blockForward(cfg, dp.params, dws, dxd, dyd);
      blockBackward(cfg, dp.params, dg.params, dws, dxd, ddy, ddx);
      const tol = { atol: 2e-5, rtol: 2e-4 };
      assertClose(downloadDevice<Float32Array>(dyd), y.f32, { ...tol, what: 'y' });
      assertClose(downloadDevice<Float32Array>(ddx), dx.f32, { ...tol, what: 'dx' });
      const got = allocBlockParams(cfg).params;
      downloadBlockParams(cudaBackend, got, dg.params);
      for (const k of BLOCK_PARAM_NAMES) if (g[k]) assertClose(got[k]!.f32, g[k]!.f32, { ...tol, what: `d${k}` });
      // the backward without dx still accumulates the input norm's gradient
      dg.zero();
      blockBackward(cfg, dp.params, dg.params, dws, dxd, ddy, null);
      downloadBlockParams(cudaBackend, got, dg.params);
      for (const k of BLOCK_PARAM_NAMES) if (g[k]) assertClose(got[k]!.f32.map((v, i) => v + g0[k]!.f32[i]!), g[k]!.f32, { ...tol, what: `d${k} (no dx)` });
      assert.throws(() => uploadBlockParams(cudaBackend, dp.params, allocBlockParams(tinyConfig({ ...over, qkvBias: !cfg.qkvBias })).params), /exists on one side only/);
    } finally {
      dp.free();
      dg.free();
      dws.free();
    }
  });
}

for (const [name, over] of BLOCK_VARIANTS) {
  testOnBackends(`block forward over a kv cache equals the CPU block on the whole sequence: ${name}`, (s) => {
    const cfg = tinyConfig(over);
    const rng = new Rng(5);
    const T = 9, prompt = 4, C = cfg.hiddenSize;
    const { params: p } = allocBlockParams(cfg);
    randomBlockParams(rng, p);
    const x = randn(rng, [1, T, C]); // (1, T, C)
    const full = Tensor.zeros([1, T, C]);
    blockForward(cfg, p, new BlockWorkspace(cpuBackend, cfg, 1, T, { training: false }), x, full);

    const rope = ropeTables(cfg, 0, T);
    const rows = T * cfg.numKvHeads * cfg.headDim;
    const cache: KvCache<DeviceArray> = { k: s.alloc('f32', rows), v: s.alloc('f32', rows), cos: s.upload(rope.cos.f32), sin: s.upload(rope.sin.f32) };
    const dp = new BlockArena(cudaBackend, cfg);
    const cached = new Float32Array(T * C);
    try {
      uploadBlockParams(cudaBackend, dp.params, p);
      for (let pos = 0; pos < T; ) {
        const n = pos === 0 ? prompt : 1;
        const ws = new BlockWorkspace(cudaBackend, cfg, 1, n, { training: false });
        try {
          const xd = s.upload(x.f32.subarray(pos * C, (pos + n) * C)), yd = s.alloc('f32', n * C);
          blockForward(cfg, dp.params, ws, xd, yd, undefined, { cache, pos });
          cached.set(downloadDevice<Float32Array>(yd), pos * C);
        } finally {
          ws.free();
        }
        pos += n;
      }
      assertClose(cached, full.f32, { atol: 2e-5, rtol: 2e-4, what: 'cached vs full block output' });
      // one sequence only, and positions inside the cache
      const ws2 = new BlockWorkspace(cudaBackend, cfg, 2, 1, { training: false });
      const ws1 = new BlockWorkspace(cudaBackend, cfg, 1, 2, { training: false });
      try {
        assert.throws(() => blockForward(cfg, dp.params, ws2, s.alloc('f32', 2 * C), s.alloc('f32', 2 * C), undefined, { cache, pos: 0 }), /one sequence, got B = 2/);
        assert.throws(() => blockForward(cfg, dp.params, ws1, s.alloc('f32', 2 * C), s.alloc('f32', 2 * C), undefined, { cache, pos: 8 }), /positions 8\.\.9 do not fit a kv cache of 9 positions/);
      } finally {
        ws2.free();
        ws1.free();
      }
    } finally {
      dp.free();
    }
  });
}

testOnBackends('a bf16 workspace keeps the linears\' inputs in bf16 and refuses f32 linears', (s) => {
  const cfg = tinyConfig({});
  const B = 1, T = 3, N = B * T, C = cfg.hiddenSize;
  const dp = new BlockArena(cudaBackend, cfg);
  const ws = new BlockWorkspace(cudaBackend, cfg, B, T, { precision: 'bf16' });
  try {
    assert.deepEqual([ws.ln1.dtype, ws.ln2.dtype, ws.act.dtype, ws.attIn?.dtype, ws.att.dtype, ws.h.dtype], ['bf16', 'bf16', 'bf16', 'bf16', 'f32', 'f32']);
    assert.equal(ws.act.length, N * cfg.intermediateSize);
    assert.equal(ws.attIn?.length, ws.att.length);
    const f32 = new BlockWorkspace(cudaBackend, cfg, B, T);
    assert.deepEqual([f32.ln1.dtype, f32.act.dtype, f32.attIn], ['f32', 'f32', null]);
    f32.free();
    const x = s.alloc('f32', N * C), y = s.alloc('f32', N * C);
    assert.throws(() => blockForward(cfg, dp.params, ws, x, y), /blockForward: the workspace was made for bf16 GEMMs but the linears run f32 GEMMs/);
  } finally {
    dp.free();
    ws.free();
  }
});
