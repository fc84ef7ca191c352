// Generation on CUDA (generate --device cuda: Model and KvDecoder on the CUDA backend) against
// PyTorch's golden logits and greedy tokens for llama-tiny and against the CPU generation of
// the same prompt, full precision and packed, on the backends of backends.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { deviceAllocStats, type CudaBackend } from '../../src/engine/cuda.js';
import { attentionPathCuda } from '../../src/ops/cuda/attention-gemm.js';
import { WeightSource } from '../../src/model/weights.js';
import { KvDecoder, Model } from '../../src/model/model.js';
import { cudaBackend } from '../../src/backend/cuda.js';
import { generateFromSource, generateIds, type GenerateOptions } from '../../src/pipeline/generate.js';
import { loadModel, readGolden, rtnTiny, TINY } from '../golden.js';
import { backendCases, withBackend } from './backends.js';
import { pipelineSkip } from '../tier.js';

const golden = readGolden(TINY);

// RTN w3g64: 3-bit exercises the GPTQ 96-bit packing units on the device
const quantizedTiny = (): Promise<string> => rtnTiny(3, 64);

/** Runs fn with `src` open under withBackend (which checks that no device memory leaked). */
function onDevice<R>(backend: CudaBackend, model: string, fn: (src: WeightSource) => R): R {
  const src = WeightSource.open(model);
  try {
    let result!: R;
    withBackend(backend, () => {
      result = fn(src);
    });
    return result;
  } finally {
    src.close();
  }
}

function maxAbsDiff(a: Float32Array, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

for (const bc of backendCases()) {
  test(`cuda generate: next-token logits over the kv caches equal PyTorch's (f32) and stay within bf16 rounding (bf16) [${bc.name}]`, { skip: pipelineSkip(bc) }, () => {
    const ids = Int32Array.from(golden.forward.input_ids); // (64,)
    // a model built for windows and one built for decoding only (as generateFromSource builds it)
    const cases = [['f32', 'windows'], ['f32', 'decode'], ['bf16', 'decode']] as const;
    for (const [precision, use] of cases) {
      onDevice(bc.backend(), TINY, (src) => {
        const model = new Model(cudaBackend, src, { B: 1, T: ids.length, precision, use });
        const decoder = new KvDecoder(model, ids.length);
        try {
          // steps of 1, 31 and 32 new tokens: prompt-sized runs and a single-token start
          for (const pos of golden.forward.positions) {
            const want = golden.forward.logits[String(pos)]!;
            const got = decoder.nextTokenLogits(ids.subarray(0, pos + 1));
            const err = maxAbsDiff(got, want);
            const scale = want.reduce((m, x) => Math.max(m, Math.abs(x)), 0);
            // f32: the CPU path's bound against the same golden; bf16 GEMM inputs carry 8
            // significant bits (relative rounding 2^-9 per input): 1.5% of the largest logit,
            // about three times what the emulator's bf16 GEMMs give (0.33–0.52%)
            const bound = precision === 'f32' ? 1e-3 : 1.5e-2 * scale;
            assert.ok(err <= bound, `${precision} ${use} position ${pos}: max |logit error| ${err} > ${bound}`);
            if (precision === 'bf16') assert.ok(err > 0, 'bf16 GEMMs round differently from f32');
          }
          assert.throws(() => decoder.nextTokenLogits(ids), /no new token after the 64 cached ones/);
          assert.throws(() => decoder.nextTokenLogits(new Int32Array(65)), /ids differ from the cached prefix at position 0/);
        } finally {
          decoder.free();
          model.free();
        }
      });
    }
  });

  test(`cuda generate: a model built for decoding holds one row of logits and no attention scores, and refuses windows [${bc.name}]`, { skip: bc.skip }, () => {
    onDevice(bc.backend(), TINY, (src) => {
      const T = 64;
      const { hiddenSize: C, vocabSize: V } = src.cfg;
      const held = (use: 'windows' | 'decode'): number => {
        const before = deviceAllocStats().liveBytes;
        const model = new Model(cudaBackend, src, { B: 1, T, use });
        const bytes = deviceAllocStats().liveBytes - before;
        if (use === 'decode') assert.throws(() => model.windowLosses(new Int32Array(T), 1, () => {}), /built for cached decoding only/);
        model.free();
        return bytes;
      };
      const windows = held('windows'), decode = held('decode');
      // (T − 1) rows fewer of logits, final-norm output and rstd; no targets and losses (T each)
      const rows = (T - 1) * (V + C + 1) * 4 + 2 * T * 4;
      const scores = attentionPathCuda() !== 'flash' ? 1 : 0; // the GEMM path's score scratch (f32 blocks take it under 'tc' too), at least T·T f32
      assert.ok(windows - decode >= rows + scores * T * T * 4, `windows ${windows} B, decode ${decode} B`);
    });
  });

  test(`cuda generate: the kv decoder refuses steps past its cache or its model's buffers [${bc.name}]`, { skip: bc.skip }, () => {
    onDevice(bc.backend(), TINY, (src) => {
      const model = new Model(cudaBackend, src, { B: 1, T: 4, use: 'decode' });
      const decoder = new KvDecoder(model, 6);
      try {
        assert.throws(() => new KvDecoder(model, 0), /maxTokens must be an integer >= 1, got 0/);
        assert.throws(() => decoder.nextTokenLogits(Int32Array.of(0, 5, 7, 8, 9)), /5 new tokens in one step, but its buffers hold 1 to 4/);
        assert.throws(() => decoder.nextTokenLogits(Int32Array.of(0, 5, 7, 8, 9, 10, 11)), /7 tokens exceed the cache's 6/);
        assert.throws(() => decoder.nextTokenLogits(new Int32Array(0)), /no new token after the 0 cached ones/);
        // a refused step leaves the caches usable
        assert.equal(decoder.nextTokenLogits(Int32Array.of(0, 5, 7, 8)).length, model.cfg.vocabSize);
        assert.equal(decoder.nextTokenLogits(Int32Array.of(0, 5, 7, 8, 9)).length, model.cfg.vocabSize);
      } finally {
        decoder.free();
        model.free();
      }
    });
  });

  test(`cuda generate: greedy and sampled tokens equal the CPU's, full precision and packed [${bc.name}]`, { skip: pipelineSkip(bc) }, async () => {
    const prompt = golden.greedy.prompt_ids;
    const greedyLength = golden.greedy.output_ids.length;
    const greedy: GenerateOptions = { maxNewTokens: greedyLength - prompt.length };
    const sampled: GenerateOptions = { maxNewTokens: 12, temperature: 0.8, seed: 7 };
    for (const model of [TINY, await quantizedTiny()]) {
      const cpu = loadModel(model);
      for (const opts of [greedy, sampled]) {
        const want = generateIds(cpu, prompt, opts);
        const got = onDevice(bc.backend(), model, (src) => generateFromSource(src, prompt, opts, { device: 'cuda', precision: 'f32' }));
        assert.deepEqual(got, want, `${model} ${JSON.stringify(opts)}`);
        if (model === TINY && opts === greedy) assert.deepEqual(got, golden.greedy.output_ids.slice(0, greedyLength), 'PyTorch greedy tokens');
      }
      // bf16 GEMMs: a full run of the right length over in-vocabulary tokens
      const bf16 = onDevice(bc.backend(), model, (src) => generateFromSource(src, prompt, greedy, { device: 'cuda', precision: 'bf16' }));
      assert.equal(bf16.length, greedyLength);
      assert.deepEqual(bf16.slice(0, prompt.length), prompt);
      for (const id of bf16) assert.ok(Number.isInteger(id) && id >= 0 && id < cpu.cfg.vocabSize, `token ${id}`);
    }
  });
}

test('generate refuses an empty prompt before touching a device', () => {
  const src = WeightSource.open(TINY);
  try {
    assert.throws(() => generateFromSource(src, [], { maxNewTokens: 4 }, { device: 'cuda' }), /generate: empty prompt/);
    assert.throws(() => generateIds(loadModel(TINY), [], { maxNewTokens: 4 }), /generate: empty prompt/);
  } finally {
    src.close();
  }
});
