// Decoding over a key/value cache against the full causal forward: blockForward with a KvCache
// (a prompt chunk, then one position at a time) equals the block run on the whole sequence for
// every block variant, sliding window included; KvDecoder's next-token logits equal
// Model.nextTokenLogits's (which runs the whole prefix again) on the bundled tiny model and its RTN
// checkpoint, so generation over the cache picks the same tokens; misuse is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Rng } from '../../src/engine/random.js';
import { Tensor } from '../../src/engine/tensor.js';
import { allocBlockParams, blockForward, BlockWorkspace, type KvCache } from '../../src/model/block.js';
import { cpuBackend } from '../../src/backend/cpu.js';
import { KvDecoder } from '../../src/model/model.js';
import { ropeTables } from '../../src/model/rope.js';
import { generateIds, generateIdsCached } from '../../src/pipeline/generate.js';
import { loadModel, rtnTiny, TINY } from '../golden.js';
import { assertClose, randn } from '../util.js';
import { BLOCK_VARIANTS, randomBlockParams, tinyConfig } from './tiny-config.js';

for (const [name, over] of BLOCK_VARIANTS) {
  test(`block forward over a kv cache equals the full causal forward: ${name}`, () => {
    const cfg = tinyConfig(over);
    const rng = new Rng(5);
    const T = 9;
    const prompt = 4; // positions run as one chunk, then one at a time
    const C = cfg.hiddenSize;
    const { params: p } = allocBlockParams(cfg);
    randomBlockParams(rng, p);
    const x = randn(rng, [1, T, C]); // (1, T, C)
    const full = Tensor.zeros([1, T, C]);
    blockForward(cfg, p, new BlockWorkspace(cpuBackend, cfg, 1, T, { training: false }), x, full);

    const rope = ropeTables(cfg, 0, T);
    const cache: KvCache = { k: Tensor.zeros([T, cfg.numKvHeads, cfg.headDim]), v: Tensor.zeros([T, cfg.numKvHeads, cfg.headDim]), ...rope };
    const cached = Tensor.zeros([1, T, C]);
    for (let pos = 0; pos < T; ) {
      const n = pos === 0 ? prompt : 1;
      const ws = new BlockWorkspace(cpuBackend, cfg, 1, n, { training: false });
      const y = Tensor.zeros([1, n, C]);
      blockForward(cfg, p, ws, x.view([T, C]).rows(pos, n).view([1, n, C]), y, undefined, { cache, pos });
      cached.view([T, C]).rows(pos, n).f32.set(y.f32);
      pos += n;
    }
    assertClose(cached.f32, full.f32, { atol: 1e-5, rtol: 1e-5, what: 'cached vs full block output' });
  });
}

test('block forward refuses a kv cache with B > 1 or positions past its end', () => {
  const cfg = tinyConfig({});
  const { params: p } = allocBlockParams(cfg);
  const cache: KvCache = { k: Tensor.zeros([4, cfg.numKvHeads, cfg.headDim]), v: Tensor.zeros([4, cfg.numKvHeads, cfg.headDim]), ...ropeTables(cfg, 0, 4) };
  const C = cfg.hiddenSize;
  const ws2 = new BlockWorkspace(cpuBackend, cfg, 2, 1, { training: false });
  assert.throws(() => blockForward(cfg, p, ws2, Tensor.zeros([2, 1, C]), Tensor.zeros([2, 1, C]), undefined, { cache, pos: 0 }), /one sequence, got B = 2/);
  const ws = new BlockWorkspace(cpuBackend, cfg, 1, 2, { training: false });
  assert.throws(() => blockForward(cfg, p, ws, Tensor.zeros([1, 2, C]), Tensor.zeros([1, 2, C]), undefined, { cache, pos: 3 }), /positions 3\.\.4 do not fit a kv cache of 4 positions/);
});

test('KvDecoder logits equal the full-prefix logits step by step, full precision and RTN w3g64', async () => {
  for (const dir of [TINY, await rtnTiny(3, 64)]) {
    const model = loadModel(dir);
    const ids = [0, 592, 461, 278, 17];
    const dec = new KvDecoder(model, ids.length + 12);
    for (let step = 0; step < 12; step++) {
      const prefix = Int32Array.from(ids);
      const got = dec.nextTokenLogits(prefix);
      const want = model.nextTokenLogits(prefix);
      assertClose(got, want, { what: `${dir} step ${step}` }); // 1e-5 (measured: bit-identical)
      let next = 0;
      for (let v = 1; v < want.length; v++) if (want[v]! > want[next]!) next = v;
      ids.push(next);
    }
  }
});

test('generateIdsCached picks the same tokens as full-prefix generation, greedy and sampled', async () => {
  for (const dir of [TINY, await rtnTiny(3, 64)]) {
    const model = loadModel(dir);
    for (const opts of [{ maxNewTokens: 20 }, { maxNewTokens: 20, temperature: 0.8, seed: 7 }]) {
      assert.deepEqual(generateIdsCached(model, [0, 592], opts), generateIds(model, [0, 592], opts), `${dir} ${JSON.stringify(opts)}`);
    }
  }
});

test('KvDecoder refuses ids that do not extend its cache, no new token, and more tokens than it holds', () => {
  const model = loadModel(TINY);
  assert.throws(() => new KvDecoder(model, 0), /maxTokens must be an integer >= 1, got 0/);
  const dec = new KvDecoder(model, 4);
  dec.nextTokenLogits(Int32Array.of(0, 5));
  assert.throws(() => dec.nextTokenLogits(Int32Array.of(0, 6, 7)), /ids differ from the cached prefix at position 1/);
  assert.throws(() => dec.nextTokenLogits(Int32Array.of(0, 5)), /no new token after the 2 cached ones/);
  assert.throws(() => dec.nextTokenLogits(Int32Array.of(0, 5, 7, 8, 9)), /5 tokens exceed the cache's 4/);
  assert.equal(dec.nextTokenLogits(Int32Array.of(0, 5, 7, 8)).length, model.cfg.vocabSize);
});
