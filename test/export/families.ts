// One tiny checkpoint per family eqat quantizes, derived from llama-tiny's weights (the bundled
// fixture) so that every export runs each llama.cpp / transformers.js architecture it maps to:
//   llama    llama-tiny as it is (f16, untied lm_head);
//   mistral  model_type mistral with a sliding window of `window` tokens;
//   qwen2    q/k/v biases (small random values), bf16 storage;
//   qwen3    per-head q/k RMSNorm (weights near 1), tied embeddings (no lm_head.weight), bf16.
// The derived weights are llama-tiny's rounded to the storage dtype; the tokenizer is
// llama-tiny's (byte-level BPE that adds bos).
import { cpSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { SafetensorsModel } from '../../src/io/safetensors.js';
import { writeSafetensors, type TensorToWrite } from '../../src/io/safetensors-write.js';
import { fromF32 } from '../../src/engine/dtype.js';
import { Rng } from '../../src/engine/random.js';
import { TINY } from '../golden.js';

export const FAMILIES = ['llama', 'mistral', 'qwen2', 'qwen3'] as const;
export type Family = (typeof FAMILIES)[number];

/** Writes the `family` variant of llama-tiny (full precision) to `dir` and returns `dir`. */
export function deriveFamily(dir: string, family: Family, { window = 1024 }: { window?: number } = {}): string {
  mkdirSync(dir, { recursive: true });
  const files = ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json'];
  if (family === 'llama') {
    for (const f of [...files, 'config.json', 'model.safetensors']) cpSync(join(TINY, f), join(dir, f));
    return dir;
  }
  const dtype = family === 'mistral' ? 'F16' : 'BF16';
  const st = SafetensorsModel.open(TINY);
  const rng = new Rng(family === 'qwen2' ? 2 : 3);
  const tensors: TensorToWrite[] = [];
  const add = (name: string, shape: number[], f32: Float32Array): void => {
    tensors.push({ name, dtype, shape, data: fromF32(dtype === 'F16' ? 'f16' : 'bf16', f32) });
  };
  const rand = (n: number, scale: number, offset = 0): Float32Array => Float32Array.from({ length: n }, () => offset + scale * (2 * rng.next() - 1));
  for (const name of st.names()) {
    if (family === 'qwen3' && name === 'lm_head.weight') continue;
    add(name, st.info(name).shape, st.readF32(name));
  }
  const cfg = JSON.parse(readFileSync(join(TINY, 'config.json'), 'utf8')) as Record<string, unknown>;
  const layers = cfg['num_hidden_layers'] as number;
  const D = cfg['head_dim'] as number;
  const H = cfg['num_attention_heads'] as number;
  const Hkv = cfg['num_key_value_heads'] as number;
  for (let i = 0; i < layers; i++) {
    const p = `model.layers.${i}.self_attn`;
    if (family === 'qwen2') {
      for (const [m, n] of [['q_proj', H * D], ['k_proj', Hkv * D], ['v_proj', Hkv * D]] as const) add(`${p}.${m}.bias`, [n], rand(n, 0.2));
    }
    if (family === 'qwen3') {
      add(`${p}.q_norm.weight`, [D], rand(D, 0.3, 1));
      add(`${p}.k_norm.weight`, [D], rand(D, 0.3, 1));
    }
  }
  st.close();
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  cfg['dtype'] = dtype === 'F16' ? 'float16' : 'bfloat16';
  if (family === 'mistral') Object.assign(cfg, { model_type: 'mistral', architectures: ['MistralForCausalLM'], sliding_window: window });
  if (family === 'qwen2') Object.assign(cfg, { model_type: 'qwen2', architectures: ['Qwen2ForCausalLM'], use_sliding_window: false });
  if (family === 'qwen3') {
    Object.assign(cfg, { model_type: 'qwen3', architectures: ['Qwen3ForCausalLM'], attention_bias: false, tie_word_embeddings: true, use_sliding_window: false });
  }
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  for (const f of files) cpSync(join(TINY, f), join(dir, f));
  return dir;
}
