// The quantization description of a checkpoint: `quantization_config` in config.json (and
// quantize_config.json beside it), in the GPTQ form that transformers / GPTQModel read.
export interface QuantConfig {
  bits: number;
  groupSize: number;
  /** 'gptq_v2' stores zero points as-is; 'gptq' (v1) stores zero − 1. */
  checkpointFormat: 'gptq' | 'gptq_v2';
  sym: boolean;
  descAct: boolean;
}

/** Reads quantization_config from a parsed config.json; null for a full-precision model. */
export function readQuantConfig(config: unknown, file: string): QuantConfig | null {
  if (typeof config !== 'object' || config === null) return null;
  const qc = (config as Record<string, unknown>)['quantization_config'];
  if (qc === undefined || qc === null) return null;
  if (typeof qc !== 'object') throw new Error(`${file}: quantization_config must be an object`);
  const q = qc as Record<string, unknown>;
  if (q['quant_method'] !== 'gptq') {
    throw new Error(`${file}: quantization_config.quant_method '${String(q['quant_method'])}' is not supported (only 'gptq')`);
  }
  const bits = q['bits'];
  const groupSize = q['group_size'];
  if (typeof bits !== 'number' || ![2, 3, 4, 8].includes(bits)) {
    throw new Error(`${file}: quantization_config.bits must be 2, 3, 4 or 8, got ${JSON.stringify(bits)}`);
  }
  if (typeof groupSize !== 'number' || !Number.isInteger(groupSize) || groupSize <= 0) {
    throw new Error(`${file}: quantization_config.group_size must be a positive integer, got ${JSON.stringify(groupSize)}`);
  }
  if (q['desc_act'] === true) throw new Error(`${file}: desc_act=true (act-order) checkpoints are not supported`);
  const fmt = q['checkpoint_format'] ?? 'gptq';
  if (fmt !== 'gptq' && fmt !== 'gptq_v2') {
    throw new Error(`${file}: quantization_config.checkpoint_format '${String(fmt)}' is not supported (gptq, gptq_v2)`);
  }
  return { bits, groupSize, checkpointFormat: fmt, sym: q['sym'] === true, descAct: false };
}

/** The quantization_config object eqat writes. */
export function quantConfigJson(bits: number, groupSize: number): Record<string, unknown> {
  return {
    quant_method: 'gptq',
    bits,
    group_size: groupSize,
    desc_act: false,
    sym: false,
    true_sequential: true,
    checkpoint_format: 'gptq_v2',
    pack_dtype: 'int32',
  };
}
