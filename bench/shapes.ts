// What the GPU benchmarks share: Llama-family model shapes with random weights (nothing is
// downloaded), written as the config.json of Llama-2-7B (hidden 4096, ffn 11008, 32 heads, no
// GQA), Llama-2-70B (hidden 8192, ffn 28672, 64 heads, 8 kv heads) and the project's
// llama-small, and read by the same parser as a real checkpoint; the flag reader; and the
// CUDA-or-skip check.
import { parseConfig } from '../src/io/hf-config.js';
import { probeCuda, type CudaDeviceInfo } from '../src/engine/cuda.js';
import type { ModelConfig } from '../src/model/config.js';

const SHAPES: Record<string, Record<string, number>> = {
  '7b': { hidden_size: 4096, intermediate_size: 11008, num_attention_heads: 32, num_key_value_heads: 32, num_hidden_layers: 32, vocab_size: 32000 },
  '70b': { hidden_size: 8192, intermediate_size: 28672, num_attention_heads: 64, num_key_value_heads: 8, num_hidden_layers: 80, vocab_size: 32000 },
  small: { hidden_size: 384, intermediate_size: 1024, num_attention_heads: 6, num_key_value_heads: 2, num_hidden_layers: 6, vocab_size: 4096 },
};

/** The config of shape `name` for sequences up to T tokens (throws naming the choices for an unknown one). */
export function shapeConfig(name: string, T: number, what: string): ModelConfig {
  const shape = SHAPES[name];
  if (!shape) throw new Error(`${what}: --shape must be one of ${Object.keys(SHAPES).join(', ')}, got ${name}`);
  const json = { model_type: 'llama', torch_dtype: 'float32', max_position_embeddings: Math.max(4096, T), ...shape };
  return parseConfig(json, `${what} --shape ${name}`);
}

/** Value of `--name` in argv, else the default. */
export function flagValue(argv: readonly string[], name: string, dflt: string): string {
  const i = argv.indexOf(name);
  return i >= 0 && i + 1 < argv.length ? argv[i + 1]! : dflt;
}

/** The CUDA device to measure; without one, says why and exits 0 (a benchmark, not a failure). */
export function cudaDeviceOrSkip(what: string): CudaDeviceInfo {
  const probe = probeCuda();
  if (!probe.available) {
    console.log(`${what}: no CUDA device (${probe.reason}); skipping`);
    process.exit(0);
  }
  return probe.devices[probe.device ?? 0]!;
}
