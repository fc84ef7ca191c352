// The decoder block on CUDA (src/model/block-cuda.ts) against the CPU block, forward and
// backward, for every variant of the family (GQA, q/k/v and o/MLP biases, q/k norm, sliding
// window), on the backends of backends.ts. The CPU block is itself checked against finite
// differences (test/model/block.test.ts), so agreement here checks the CUDA composition.
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { downloadDevice } from '../../src/engine/cuda.js';
import { allocBlockParams, blockBackward, blockForward, BlockWorkspace, BLOCK_PARAM_NAMES } from '../../src/model/block.js';
import {
  blockBackwardCuda,
  blockForwardCuda,
  DeviceBlockArena,
  DeviceBlockWorkspace,
  downloadBlockParams,
  uploadBlockParams,
} from '../../src/model/block-cuda.js';
import { ropeTables } from '../../src/model/rope.js';
import { assertClose, randn } from '../util.js';
import { BLOCK_VARIANTS, tinyConfig } from '../model/tiny-config.js';
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
    const rope = ropeTables(cfg, 0, T);
    const ws = new BlockWorkspace(cfg, B, T, rope);
    const x = randn(rng, [B, T, C]), dy = randn(rng, [B, T, C]);
    const y = Tensor.zeros([B, T, C]), dx = Tensor.zeros([B, T, C]);
    const g0 = allocBlockParams(cfg).params;
    for (const k of BLOCK_PARAM_NAMES) if (g[k]) g0[k]!.f32.set(g[k]!.f32);
    blockForward(cfg, p, ws, x, y);
    blockBackward(cfg, p, g, ws, x, dy, dx);

    const dp = new DeviceBlockArena(cfg), dg = new DeviceBlockArena(cfg);
    const dws = new DeviceBlockWorkspace(cfg, B, T);
    try {
      uploadBlockParams(dp.params, p);
      uploadBlockParams(dg.params, g0);
      const dxd = s.upload(x.f32), dyd = s.alloc('f32', x.size), ddy = s.upload(dy.f32), ddx = s.alloc('f32', x.size);
      blockForwardCuda(cfg, dp.params, dws, dxd, dyd);
      blockBackwardCuda(cfg, dp.params, dg.params, dws, dxd, ddy, ddx);
      const tol = { atol: 2e-5, rtol: 2e-4 };
      assertClose(downloadDevice<Float32Array>(dyd), y.f32, { ...tol, what: 'y' });
      assertClose(downloadDevice<Float32Array>(ddx), dx.f32, { ...tol, what: 'dx' });
      const got = allocBlockParams(cfg).params;
      downloadBlockParams(got, dg.params);
      for (const k of BLOCK_PARAM_NAMES) if (g[k]) assertClose(got[k]!.f32, g[k]!.f32, { ...tol, what: `d${k}` });
      // the backward without dx still accumulates the input norm's gradient
      dg.zero();
      blockBackwardCuda(cfg, dp.params, dg.params, dws, dxd, ddy, null);
      downloadBlockParams(got, dg.params);
      for (const k of BLOCK_PARAM_NAMES) if (g[k]) assertClose(got[k]!.f32.map((v, i) => v + g0[k]!.f32[i]!), g[k]!.f32, { ...tol, what: `d${k} (no dx)` });
      assert.throws(() => uploadBlockParams(dp.params, allocBlockParams(tinyConfig({ ...over, qkvBias: !cfg.qkvBias })).params), /exists on one side only/);
    } finally {
      dp.free();
      dg.free();
      dws.free();
    }
  });
}
