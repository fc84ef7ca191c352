// The decoder block's backward against finite differences of its forward, for the Llama
// layout and the variants the family has (q/k/v biases as in Qwen2, q/k norm as in Qwen3,
// sliding window as in Mistral), on a tiny random block.
import { test } from 'node:test';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { allocBlockParams, blockBackward, blockForward, BlockWorkspace, BLOCK_PARAM_NAMES } from '../../src/model/block.js';
import { cpuBackend } from '../../src/backend/cpu.js';
import { checkGrad, randn } from '../util.js';
import { BLOCK_VARIANTS, tinyConfig } from './tiny-config.js';

for (const [name, over] of BLOCK_VARIANTS) {
  test(`block backward matches finite differences: ${name}`, () => {
    const cfg = tinyConfig(over);
    const rng = new Rng(11);
    const B = 2;
    const T = 5;
    const C = cfg.hiddenSize;
    const { params: p } = allocBlockParams(cfg);
    const { params: g } = allocBlockParams(cfg);
    for (const k of BLOCK_PARAM_NAMES) {
      const t = p[k];
      if (!t) continue;
      if (k.endsWith('Norm')) rng.fillUniform(t.f32, 0.5, 1.5);
      else rng.fillNormal(t.f32, 0.3);
    }
    const ws = new BlockWorkspace(cpuBackend, cfg, B, T);
    const x = randn(rng, [B, T, C]);
    const y = Tensor.zeros([B, T, C]);
    const R = randn(rng, [B, T, C]); // loss = sum(y * R)
    const loss = (): number => {
      blockForward(cfg, p, ws, x, y);
      let s = 0;
      for (let i = 0; i < y.size; i++) s += y.f32[i]! * R.f32[i]!;
      return s;
    };
    loss();
    const dx = Tensor.zeros([B, T, C]);
    blockBackward(cfg, p, g, ws, x, R, dx);
    // f32 forward: eps 1e-2 keeps rounding noise well below the tolerance for these O(1) values
    const opts = { eps: 1e-2, atol: 2e-3, rtol: 2e-2, samples: 12 };
    checkGrad(loss, x.f32, dx.f32, { ...opts, what: 'dx' });
    for (const k of BLOCK_PARAM_NAMES) {
      const t = p[k];
      if (!t) continue;
      checkGrad(loss, t.f32, g[k]!.f32, { ...opts, what: `d${k}` });
    }
  });
}
