// Writing eqat's quantized checkpoint: a Hugging Face directory in the GPTQ v2 safetensors
// layout (per linear: qweight (I·b/32, O) int32, qzeros (I/G, O·b/32) int32, scales (I/G, O)
// f16, g_idx (I) int32; zero points stored as-is, `checkpoint_format: gptq_v2`), with
// quantize_config.json, quantization_config in config.json, and the tokenizer files.
//
// One shard per decoder block (model-0000i-of-0000N.safetensors) plus a last shard with the
// embeddings, final norm and lm_head. A block's shard is written as soon as the block is
// frozen, which is also what lets an interrupted Block-AP run resume.
import { copyFileSync, existsSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { ModelConfig } from '../model/config.js';
import { BLOCK_LINEARS, BLOCK_PARAM_NAMES, HF_PARAM_NAME, blockParamShapes, isBlockLinear, type BlockLinear, type BlockParams } from '../model/block.js';
import { writeSafetensors, type TensorToWrite } from './safetensors-write.js';
import { gIdx, packQweight, packQzeros } from '../quant/gptq-pack.js';
import { quantConfigJson } from '../quant/checkpoint-config.js';
import type { SafetensorsModel } from './safetensors.js';
import { checkFinite } from '../model/weights.js';

/** One frozen linear: integer weights and its f16 scales / integer zeros, both (O, I/G). */
export interface FrozenLinear {
  q: Uint8Array; // (O, I)
  scaleF16: Uint16Array; // (O, I/G) f16 bits
  zero: Uint8Array; // (O, I/G)
}

export type FrozenLinears = Record<BlockLinear, FrozenLinear>;

export const TOKENIZER_FILES = [
  'tokenizer.json',
  'tokenizer_config.json',
  'special_tokens_map.json',
  'generation_config.json',
  'tokenizer.model',
  'chat_template.jinja',
] as const;

export function shardName(index: number, total: number): string {
  return `model-${String(index + 1).padStart(5, '0')}-of-${String(total).padStart(5, '0')}.safetensors`;
}

/** Number of shards of a quantized checkpoint of this config. */
export function shardCount(cfg: ModelConfig): number {
  return cfg.numLayers + 1;
}

/** The tensors of block i: packed linears, plus norms and biases in f32 (they were trained). */
export function blockShardTensors(
  i: number,
  cfg: ModelConfig,
  frozen: FrozenLinears,
  params: BlockParams,
  bits: number,
  groupSize: number,
): TensorToWrite[] {
  const out: TensorToWrite[] = [];
  const prefix = `model.layers.${i}.`;
  const shapes = blockParamShapes(cfg);
  for (const [key, module] of BLOCK_LINEARS) {
    const [O, I] = shapes[key] as [number, number];
    const groups = I / groupSize;
    const f = frozen[key];
    // scales to (groups, O)
    const scales = new Uint16Array(groups * O);
    for (let o = 0; o < O; o++) for (let g = 0; g < groups; g++) scales[g * O + o] = f.scaleF16[o * groups + g]!;
    const base = prefix + module;
    out.push({ name: base + '.qweight', dtype: 'I32', shape: [(I * bits) / 32, O], data: packQweight(f.q, O, I, bits) });
    out.push({ name: base + '.qzeros', dtype: 'I32', shape: [groups, (O * bits) / 32], data: packQzeros(f.zero, O, groups, bits) });
    out.push({ name: base + '.scales', dtype: 'F16', shape: [groups, O], data: scales });
    out.push({ name: base + '.g_idx', dtype: 'I32', shape: [I], data: gIdx(I, groupSize) });
  }
  for (const key of BLOCK_PARAM_NAMES) {
    const t = params[key];
    if (!t || isBlockLinear(key)) continue;
    out.push({ name: prefix + HF_PARAM_NAME[key], dtype: 'F32', shape: [...t.shape], data: t.f32 });
  }
  return out;
}

/** The last shard: embeddings, final norm and lm_head copied byte for byte from the source (NaN/Inf refused). */
export function headShardTensors(src: SafetensorsModel, cfg: ModelConfig): TensorToWrite[] {
  const names = ['model.embed_tokens.weight', 'model.norm.weight'];
  if (!cfg.tieWordEmbeddings && src.has('lm_head.weight')) names.push('lm_head.weight');
  return names.map((name) => {
    const t = src.readTensor(name);
    checkFinite(src.info(name).file, name, t);
    const dtype = t.dtype === 'f32' ? 'F32' : t.dtype === 'f16' ? 'F16' : t.dtype === 'bf16' ? 'BF16' : null;
    if (!dtype) throw new Error(`${name}: unexpected dtype ${t.dtype} for a floating-point tensor`);
    return { name, dtype, shape: [...t.shape], data: t.data as Float32Array | Uint16Array };
  });
}

/**
 * Completes a checkpoint directory whose shards are already written: index, config.json with
 * quantization_config, quantize_config.json, tokenizer files.
 */
export function writeCheckpointMetadata(
  dir: string,
  sourceDir: string,
  bits: number,
  groupSize: number,
  shardTensorNames: string[][],
  extraConfig: Record<string, unknown> = {},
): void {
  const total = shardTensorNames.length;
  const weightMap: Record<string, string> = {};
  shardTensorNames.forEach((names, i) => {
    for (const n of names) weightMap[n] = shardName(i, total);
  });
  const sorted = Object.fromEntries(Object.keys(weightMap).sort().map((k) => [k, weightMap[k]!]));
  writeJsonAtomic(join(dir, 'model.safetensors.index.json'), { metadata: { format: 'pt' }, weight_map: sorted });
  const config = JSON.parse(readFileSync(join(sourceDir, 'config.json'), 'utf8')) as Record<string, unknown>;
  config['quantization_config'] = quantConfigJson(bits, groupSize);
  Object.assign(config, extraConfig);
  writeJsonAtomic(join(dir, 'config.json'), config);
  writeJsonAtomic(join(dir, 'quantize_config.json'), quantConfigJson(bits, groupSize));
  for (const f of TOKENIZER_FILES) if (existsSync(join(sourceDir, f))) copyFileSync(join(sourceDir, f), join(dir, f));
}

/** Writes `value` as JSON to `path` through a temporary sibling renamed into place; an error names `path`. */
export function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = path + '.tmp';
  try {
    writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n');
    renameSync(tmp, path);
  } catch (e) {
    try {
      rmSync(tmp, { force: true });
    } catch {
      // a read-only file system keeps it; removeTemporaries clears it on the rerun
    }
    const err = e as NodeJS.ErrnoException;
    if (err.path === tmp) err.path = path;
    throw e;
  }
}
