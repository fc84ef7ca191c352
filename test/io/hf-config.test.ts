// config.json → ModelConfig: the bundled fixture, configs shaped like published Mistral, Qwen2,
// Qwen3 and Llama 3 checkpoints, RoPE in all its spellings (top-level rope_theta, inside
// rope_parameters, legacy rope_scaling with type, llama3 and linear scaling), family-implied
// biases/norms/sliding windows, generation_config overrides, and one test per kind of error.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../../src/engine/native.js';
import { loadConfig, parseConfig } from '../../src/io/hf-config.js';
import type { ModelConfig } from '../../src/model/config.js';

const FIXTURE = join(packageRoot(), 'fixtures', 'llama-tiny');
const F = '/ckpt/config.json';

/** Asserts parseConfig(json) throws a message that names the file and matches `re`. */
function fails(json: unknown, re: RegExp, gen?: unknown): void {
  assert.throws(
    () => parseConfig(json, F, gen),
    (e: Error) => {
      assert.match(e.message, re);
      assert.ok(e.message.includes('/ckpt/'), `message should name the file: ${e.message}`);
      return true;
    },
  );
}

const MISTRAL_7B = {
  architectures: ['MistralForCausalLM'],
  bos_token_id: 1,
  eos_token_id: 2,
  hidden_act: 'silu',
  hidden_size: 4096,
  initializer_range: 0.02,
  intermediate_size: 14336,
  max_position_embeddings: 32768,
  model_type: 'mistral',
  num_attention_heads: 32,
  num_hidden_layers: 32,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-5,
  rope_theta: 10000.0,
  sliding_window: 4096,
  tie_word_embeddings: false,
  torch_dtype: 'bfloat16',
  use_cache: true,
  vocab_size: 32000,
};

const QWEN25_05B = {
  architectures: ['Qwen2ForCausalLM'],
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151643,
  hidden_act: 'silu',
  hidden_size: 896,
  initializer_range: 0.02,
  intermediate_size: 4864,
  max_position_embeddings: 32768,
  max_window_layers: 24,
  model_type: 'qwen2',
  num_attention_heads: 14,
  num_hidden_layers: 24,
  num_key_value_heads: 2,
  rms_norm_eps: 1e-6,
  rope_theta: 1000000.0,
  sliding_window: 32768,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

const QWEN3_06B = {
  architectures: ['Qwen3ForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 151643,
  eos_token_id: 151645,
  head_dim: 128,
  hidden_act: 'silu',
  hidden_size: 1024,
  initializer_range: 0.02,
  intermediate_size: 3072,
  max_position_embeddings: 40960,
  max_window_layers: 28,
  model_type: 'qwen3',
  num_attention_heads: 16,
  num_hidden_layers: 28,
  num_key_value_heads: 8,
  rms_norm_eps: 1e-6,
  rope_scaling: null,
  rope_theta: 1000000,
  sliding_window: null,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  use_cache: true,
  use_sliding_window: false,
  vocab_size: 151936,
};

const LLAMA32_1B = {
  architectures: ['LlamaForCausalLM'],
  attention_bias: false,
  attention_dropout: 0.0,
  bos_token_id: 128000,
  eos_token_id: 128001,
  head_dim: 64,
  hidden_act: 'silu',
  hidden_size: 2048,
  initializer_range: 0.02,
  intermediate_size: 8192,
  max_position_embeddings: 131072,
  mlp_bias: false,
  model_type: 'llama',
  num_attention_heads: 32,
  num_hidden_layers: 16,
  num_key_value_heads: 8,
  pretraining_tp: 1,
  rms_norm_eps: 1e-5,
  rope_scaling: { factor: 32.0, high_freq_factor: 4.0, low_freq_factor: 1.0, original_max_position_embeddings: 8192, rope_type: 'llama3' },
  rope_theta: 500000.0,
  tie_word_embeddings: true,
  torch_dtype: 'bfloat16',
  use_cache: true,
  vocab_size: 128256,
};

function without<T extends object>(o: T, ...keys: string[]): Record<string, unknown> {
  const c: Record<string, unknown> = { ...(o as Record<string, unknown>) };
  for (const k of keys) delete c[k];
  return c;
}

test('fixture llama-tiny (transformers 5 layout: dtype, rope_parameters with rope_theta)', () => {
  const want: ModelConfig = {
    modelType: 'llama',
    vocabSize: 4096,
    hiddenSize: 128,
    intermediateSize: 384,
    numLayers: 4,
    numHeads: 4,
    numKvHeads: 2,
    headDim: 32,
    rmsNormEps: 1e-5,
    ropeTheta: 10000,
    ropeScaling: { type: 'default' },
    maxPositionEmbeddings: 2048,
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    qkNorm: false,
    tieWordEmbeddings: false,
    slidingWindow: null,
    bosTokenId: 0,
    eosTokenIds: [1],
    storageDtype: 'f16',
  };
  assert.deepEqual(loadConfig(FIXTURE), want);
});

test('mistral: no biases whatever the flags say, sliding window value / null / transformers default', () => {
  const c = parseConfig({ ...MISTRAL_7B, attention_bias: true, mlp_bias: true }, F);
  assert.equal(c.modelType, 'mistral');
  assert.deepEqual([c.qkvBias, c.oBias, c.mlpBias, c.qkNorm], [false, false, false, false]);
  assert.equal(c.slidingWindow, 4096);
  assert.equal(c.headDim, 128);
  assert.equal(c.numKvHeads, 8);
  assert.equal(c.ropeTheta, 10000);
  assert.equal(c.rmsNormEps, 1e-5);
  assert.equal(c.maxPositionEmbeddings, 32768);
  assert.equal(c.storageDtype, 'bf16');
  assert.equal(c.bosTokenId, 1);
  assert.deepEqual(c.eosTokenIds, [2]);
  assert.equal(parseConfig({ ...MISTRAL_7B, sliding_window: null }, F).slidingWindow, null);
  assert.equal(parseConfig(without(MISTRAL_7B, 'sliding_window'), F).slidingWindow, 4096);
  assert.equal(parseConfig({ ...MISTRAL_7B, head_dim: null }, F).headDim, 128);
  fails({ ...MISTRAL_7B, sliding_window: 'wide' }, /'sliding_window' must be an integer, got the string "wide"/);
});

test('qwen2: q/k/v biases always, no o/MLP bias, tied embeddings, sliding window only when enabled on every layer', () => {
  const c = parseConfig(QWEN25_05B, F);
  assert.deepEqual(
    [c.modelType, c.qkvBias, c.oBias, c.mlpBias, c.qkNorm, c.tieWordEmbeddings, c.slidingWindow],
    ['qwen2', true, false, false, false, true, null],
  );
  assert.equal(c.headDim, 64);
  assert.equal(c.ropeTheta, 1e6);
  assert.equal(c.bosTokenId, 151643);
  assert.deepEqual(c.eosTokenIds, [151643]);
  assert.equal(parseConfig({ ...QWEN25_05B, attention_bias: false }, F).qkvBias, true);
  assert.equal(parseConfig(without(QWEN25_05B, 'tie_word_embeddings'), F).tieWordEmbeddings, false);
  // Enabled, but max_window_layers covers every layer: still full attention everywhere.
  assert.equal(parseConfig({ ...QWEN25_05B, use_sliding_window: true }, F).slidingWindow, null);
  assert.equal(parseConfig({ ...QWEN25_05B, use_sliding_window: true, max_window_layers: 0 }, F).slidingWindow, 32768);
  assert.equal(
    parseConfig({ ...QWEN25_05B, use_sliding_window: true, layer_types: Array(24).fill('sliding_attention') }, F).slidingWindow,
    32768,
  );
  fails({ ...QWEN25_05B, use_sliding_window: true, max_window_layers: 12 }, /sliding-window attention on some layers only \(12 of 24\) is not supported/);
  fails({ ...QWEN25_05B, use_sliding_window: true, layer_types: ['full_attention'] }, /'layer_types' must list/);
  // transformers defaults: no bos/eos for qwen.
  const bare = parseConfig(without(QWEN25_05B, 'bos_token_id', 'eos_token_id'), F);
  assert.equal(bare.bosTokenId, null);
  assert.deepEqual(bare.eosTokenIds, []);
});

test('qwen3: q/k norm, attention_bias on q/k/v/o, head_dim explicit or the transformers default 128', () => {
  const c = parseConfig(QWEN3_06B, F);
  assert.deepEqual([c.modelType, c.qkvBias, c.oBias, c.mlpBias, c.qkNorm, c.slidingWindow], ['qwen3', false, false, false, true, null]);
  assert.equal(c.headDim, 128); // not hidden/heads = 64
  assert.equal(c.numHeads * c.headDim, 2048);
  assert.deepEqual(c.ropeScaling, { type: 'default' });
  assert.equal(c.ropeTheta, 1e6);
  assert.equal(c.maxPositionEmbeddings, 40960);
  assert.deepEqual(c.eosTokenIds, [151645]);
  const b = parseConfig({ ...QWEN3_06B, attention_bias: true }, F);
  assert.deepEqual([b.qkvBias, b.oBias, b.mlpBias], [true, true, false]);
  assert.equal(parseConfig(without(QWEN3_06B, 'head_dim'), F).headDim, 128);
  assert.equal(parseConfig({ ...QWEN3_06B, head_dim: 64 }, F).headDim, 64);
});

test('llama: attention_bias gives q/k/v and o biases, mlp_bias the MLP biases; defaults follow transformers', () => {
  const c = parseConfig({ ...LLAMA32_1B, attention_bias: true, mlp_bias: true }, F);
  assert.deepEqual([c.qkvBias, c.oBias, c.mlpBias, c.qkNorm, c.slidingWindow], [true, true, true, false, null]);
  const minimal = parseConfig(
    { model_type: 'llama', vocab_size: 100, hidden_size: 64, intermediate_size: 96, num_hidden_layers: 2, num_attention_heads: 4 },
    F,
  );
  assert.deepEqual(minimal, {
    modelType: 'llama',
    vocabSize: 100,
    hiddenSize: 64,
    intermediateSize: 96,
    numLayers: 2,
    numHeads: 4,
    numKvHeads: 4,
    headDim: 16,
    rmsNormEps: 1e-6,
    ropeTheta: 10000,
    ropeScaling: { type: 'default' },
    maxPositionEmbeddings: 2048,
    qkvBias: false,
    oBias: false,
    mlpBias: false,
    qkNorm: false,
    tieWordEmbeddings: false,
    slidingWindow: null,
    bosTokenId: 1,
    eosTokenIds: [2],
    storageDtype: 'f32',
  } satisfies ModelConfig);
});

test('rope: llama3 scaling from rope_scaling (transformers 4) and from rope_parameters (transformers 5)', () => {
  const want = { type: 'llama3', factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192 };
  const v4 = parseConfig(LLAMA32_1B, F);
  assert.deepEqual(v4.ropeScaling, want);
  assert.equal(v4.ropeTheta, 500000);
  assert.equal(v4.headDim, 64);
  assert.equal(v4.tieWordEmbeddings, true);
  const v5 = parseConfig(
    {
      ...without(LLAMA32_1B, 'rope_scaling', 'rope_theta', 'torch_dtype'),
      dtype: 'bfloat16',
      rope_parameters: { ...LLAMA32_1B.rope_scaling, rope_theta: 500000.0 },
    },
    F,
  );
  assert.deepEqual(v5, v4);
  // original_max_position_embeddings: a top-level value wins; absent everywhere → max_position_embeddings.
  const noOrig = without(LLAMA32_1B.rope_scaling, 'original_max_position_embeddings');
  assert.equal(
    (parseConfig({ ...LLAMA32_1B, rope_scaling: noOrig }, F).ropeScaling as { originalMaxPositionEmbeddings: number }).originalMaxPositionEmbeddings,
    131072,
  );
  assert.equal(
    (parseConfig({ ...LLAMA32_1B, original_max_position_embeddings: 4096 }, F).ropeScaling as { originalMaxPositionEmbeddings: number })
      .originalMaxPositionEmbeddings,
    4096,
  );
  fails({ ...LLAMA32_1B, rope_scaling: without(LLAMA32_1B.rope_scaling, 'low_freq_factor') }, /'rope_scaling\.low_freq_factor' is missing \(required\)/);
  fails({ ...LLAMA32_1B, rope_scaling: { ...LLAMA32_1B.rope_scaling, high_freq_factor: 1 } }, /high_freq_factor \(1\) must exceed low_freq_factor \(1\)/);
});

test('rope: rope_theta inside rope_parameters wins over top level; legacy {type: linear}; empty or null scaling', () => {
  const base = { ...without(LLAMA32_1B, 'rope_scaling'), rope_theta: 10000 };
  assert.equal(parseConfig({ ...base, rope_parameters: { rope_type: 'default', rope_theta: 123456 } }, F).ropeTheta, 123456);
  assert.equal(parseConfig({ ...base, rope_parameters: { rope_type: 'default' } }, F).ropeTheta, 10000);
  assert.equal(parseConfig(without(base, 'rope_theta'), F).ropeTheta, 10000);
  const lin = parseConfig({ ...base, rope_scaling: { type: 'linear', factor: 2.0 } }, F);
  assert.deepEqual(lin.ropeScaling, { type: 'linear', factor: 2 });
  assert.deepEqual(parseConfig({ ...base, rope_scaling: {} }, F).ropeScaling, { type: 'default' });
  assert.deepEqual(parseConfig({ ...base, rope_scaling: null, rope_parameters: null }, F).ropeScaling, { type: 'default' });
  // rope_scaling, when set, takes precedence over rope_parameters (as in transformers).
  assert.deepEqual(
    parseConfig({ ...base, rope_scaling: { rope_type: 'linear', factor: 4 }, rope_parameters: { rope_type: 'default', rope_theta: 5 } }, F).ropeScaling,
    { type: 'linear', factor: 4 },
  );
  fails({ ...base, rope_scaling: { type: 'linear' } }, /'rope_scaling\.factor' is missing/);
});

test('rope: unsupported types and shapes are errors that list what is supported', () => {
  const base = without(LLAMA32_1B, 'rope_scaling');
  fails({ ...base, rope_scaling: { rope_type: 'yarn', factor: 4, original_max_position_embeddings: 4096 } }, /'rope_scaling\.rope_type' = 'yarn' is not supported \(supported RoPE types: default, linear, llama3\)/);
  fails({ ...base, rope_scaling: { type: 'dynamic', factor: 2 } }, /'rope_scaling\.type' = 'dynamic' is not supported/);
  fails({ ...base, rope_parameters: { rope_type: 'longrope' } }, /'rope_parameters\.rope_type' = 'longrope' is not supported/);
  fails({ ...base, rope_scaling: 'linear' }, /'rope_scaling' must be an object/);
  fails({ ...base, rope_parameters: { full_attention: { rope_type: 'default' }, sliding_attention: { rope_type: 'default' } } }, /separate RoPE settings per layer type/);
  fails({ ...base, partial_rotary_factor: 0.5 }, /partial_rotary_factor' = 0\.5: partial rotary embeddings are not supported/);
  fails({ ...base, rope_theta: -1 }, /'rope_theta' must be positive/);
});

test('model_type: unsupported or missing', () => {
  fails({ ...LLAMA32_1B, model_type: 'gpt2' }, /model_type 'gpt2' is not supported \(supported: llama, mistral, qwen2, qwen3\)/);
  fails(without(LLAMA32_1B, 'model_type'), /'model_type' is missing \(required\)/);
  fails({ ...LLAMA32_1B, model_type: 7 }, /'model_type' must be a string, got number 7/);
  fails([1, 2], /expected a JSON object, got an array/);
});

test('missing required keys and wrong types name the key', () => {
  for (const key of ['vocab_size', 'hidden_size', 'intermediate_size', 'num_hidden_layers', 'num_attention_heads']) {
    fails(without(LLAMA32_1B, key), new RegExp(`'${key}' is missing \\(required\\)`));
  }
  fails({ ...LLAMA32_1B, num_attention_heads: '32' }, /'num_attention_heads' must be an integer, got the string "32"/);
  fails({ ...LLAMA32_1B, hidden_size: 20.5 }, /'hidden_size' must be an integer/);
  fails({ ...LLAMA32_1B, num_hidden_layers: 0 }, /'num_hidden_layers' must be at least 1, got 0/);
  fails({ ...LLAMA32_1B, rms_norm_eps: 'small' }, /'rms_norm_eps' must be a number/);
  fails({ ...LLAMA32_1B, tie_word_embeddings: 'yes' }, /'tie_word_embeddings' must be true or false/);
  fails({ ...LLAMA32_1B, attention_bias: 1 }, /'attention_bias' must be true or false/);
  fails({ ...LLAMA32_1B, eos_token_id: 'x' }, /'eos_token_id' must be a token id or a list of token ids/);
  fails({ ...LLAMA32_1B, bos_token_id: [1, 2] }, /'bos_token_id' must be a single token id/);
  fails({ ...LLAMA32_1B, hidden_act: 'gelu' }, /'hidden_act' = 'gelu' is not supported \(only silu\)/);
});

test('head and kv-head arithmetic', () => {
  const c = parseConfig({ ...without(LLAMA32_1B, 'head_dim', 'num_key_value_heads') }, F);
  assert.equal(c.headDim, 64);
  assert.equal(c.numKvHeads, 32);
  fails({ ...LLAMA32_1B, num_key_value_heads: 5 }, /'num_attention_heads' \(32\) must be a multiple of 'num_key_value_heads' \(5\)/);
  fails({ ...without(LLAMA32_1B, 'head_dim'), hidden_size: 2050 }, /'head_dim' is not set and 'hidden_size' \(2050\) is not a multiple/);
  fails({ ...LLAMA32_1B, head_dim: 63 }, /head dimension 63 must be even/);
});

test('storage dtype from dtype / torch_dtype', () => {
  const base = without(LLAMA32_1B, 'torch_dtype');
  assert.equal(parseConfig(base, F).storageDtype, 'f32');
  assert.equal(parseConfig({ ...base, dtype: 'float32' }, F).storageDtype, 'f32');
  assert.equal(parseConfig({ ...base, dtype: 'float16' }, F).storageDtype, 'f16');
  assert.equal(parseConfig({ ...base, torch_dtype: 'bfloat16' }, F).storageDtype, 'bf16');
  assert.equal(parseConfig({ ...base, dtype: 'float16', torch_dtype: 'bfloat16' }, F).storageDtype, 'f16');
  fails({ ...base, dtype: 'int8' }, /'dtype' = 'int8' is not supported \(supported: float32, float16, bfloat16\)/);
});

test('generation_config overrides bos/eos (lists allowed, duplicates dropped)', () => {
  const c = parseConfig(LLAMA32_1B, F, { bos_token_id: 128000, eos_token_id: [128001, 128008, 128009, 128001] });
  assert.equal(c.bosTokenId, 128000);
  assert.deepEqual(c.eosTokenIds, [128001, 128008, 128009]);
  const d = parseConfig(LLAMA32_1B, F, { do_sample: true });
  assert.deepEqual([d.bosTokenId, d.eosTokenIds], [128000, [128001]]);
  const e = parseConfig({ ...LLAMA32_1B, eos_token_id: [5, 6] }, F, { bos_token_id: null });
  assert.deepEqual([e.bosTokenId, e.eosTokenIds], [128000, [5, 6]]);
  assert.throws(
    () => parseConfig(LLAMA32_1B, F, { eos_token_id: 'end' }),
    (err: Error) => err.message.includes('/ckpt/generation_config.json') && /'eos_token_id' must be a token id/.test(err.message),
  );
  assert.throws(() => parseConfig(LLAMA32_1B, F, [1]), /generation_config\.json: expected a JSON object/);
});

test('loadConfig: missing directory, missing config.json, invalid JSON in either file', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-cfg-'));
  try {
    assert.throws(() => loadConfig(join(dir, 'nope')), /nope: checkpoint directory does not exist/);
    assert.throws(() => loadConfig(dir), (e: Error) => e.message.startsWith(dir) && /no config\.json in this directory/.test(e.message));
    writeFileSync(join(dir, 'config.json'), '{"model_type": "llama",');
    assert.throws(() => loadConfig(dir), (e: Error) => e.message.startsWith(join(dir, 'config.json')) && /not valid JSON/.test(e.message));
    writeFileSync(join(dir, 'config.json'), JSON.stringify(QWEN3_06B));
    assert.equal(loadConfig(dir).modelType, 'qwen3');
    writeFileSync(join(dir, 'generation_config.json'), '{');
    assert.throws(() => loadConfig(dir), (e: Error) => e.message.startsWith(join(dir, 'generation_config.json')) && /not valid JSON/.test(e.message));
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [151645, 151643] }));
    assert.deepEqual(loadConfig(dir).eosTokenIds, [151645, 151643]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
