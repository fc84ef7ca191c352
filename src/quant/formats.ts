// Traits of the packed integer formats eqat writes: how many values share a packing unit of
// 32-bit words, what shapes the loaders accept, and what a group costs in storage. Used by the
// packers (src/quant/gptq-pack.ts) and by export (quantization_config, size reports).
//
// GPTQ (as AutoGPTQ / GPTQModel store it): codes are packed little-endian into int32 words,
// value k of a packed run at bit offset k*bits of the run's bit stream. For 2/4/8 bits a word
// holds 32/bits whole values; for 3 bits a unit of three words holds 32 values and values 10
// and 21 straddle word boundaries. Scales are stored in f16, zero points packed like the codes.
import { LINEAR_NAMES, linearShape, type LinearName, type ModelConfig } from '../model/config.js';

/** How the zero points are stored: GPTQ v1 stores zero - 1, v2 ("gptq_v2") the zero as is. */
export type GptqCheckpointFormat = 'gptq' | 'gptq_v2';

export interface PackedFormat {
  /** Short name, e.g. 'gptq-w4'. */
  readonly name: string;
  readonly method: 'gptq';
  readonly bits: number;
  /** Storage element of qweight / qzeros. */
  readonly packDtype: 'i32';
  /** Bits in one storage word. */
  readonly wordBits: 32;
  /** Values in one packing unit (32/bits for 2/4/8 bits; 32 for 3 bits). */
  readonly valuesPerUnit: number;
  /** Words in one packing unit (1 for 2/4/8 bits; 3 for 3 bits). */
  readonly wordsPerUnit: number;
  /** Whether values cross word boundaries (3 bits). */
  readonly straddlesWords: boolean;
  /** Storage dtype of the scales tensor. */
  readonly scaleDtype: 'f16';
  /** in_features must be a multiple of this for GPTQ loaders (qweight has I/32*bits rows). */
  readonly inputMultiple: number;
  /** out_features must be a multiple of this for GPTQ loaders (qzeros has O/32*bits columns). */
  readonly outputMultiple: number;
}

function gptq(bits: number): PackedFormat {
  const whole = 32 % bits === 0;
  return Object.freeze({
    name: `gptq-w${bits}`,
    method: 'gptq' as const,
    bits,
    packDtype: 'i32' as const,
    wordBits: 32 as const,
    valuesPerUnit: whole ? 32 / bits : 32,
    wordsPerUnit: whole ? 1 : bits,
    straddlesWords: !whole,
    scaleDtype: 'f16' as const,
    inputMultiple: 32,
    outputMultiple: 32,
  });
}

/** The GPTQ formats, by bit width. */
export const GPTQ_FORMATS: Readonly<Record<2 | 3 | 4 | 8, PackedFormat>> = Object.freeze({
  2: gptq(2),
  3: gptq(3),
  4: gptq(4),
  8: gptq(8),
});

/** The GPTQ format for `bits`; throws for widths GPTQ has no layout for. */
export function gptqFormat(bits: number): PackedFormat {
  const f = (GPTQ_FORMATS as Record<number, PackedFormat | undefined>)[bits];
  if (!f) throw new RangeError(`gptqFormat: GPTQ packs 2, 3, 4 or 8 bits, got bits = ${bits}`);
  return f;
}

/** int32 words that hold n packed values; n must be a whole number of packing units. */
export function packedWords(fmt: PackedFormat, n: number, what = 'packedWords'): number {
  if (!Number.isInteger(n) || n < 0 || n % fmt.valuesPerUnit !== 0) {
    throw new RangeError(
      `${what}: ${fmt.name} packs values in units of ${fmt.valuesPerUnit} (${fmt.wordsPerUnit} int32 word` +
        `${fmt.wordsPerUnit > 1 ? 's' : ''}); ${n} values is not a whole number of units`,
    );
  }
  return (n / fmt.valuesPerUnit) * fmt.wordsPerUnit;
}

/** Storage bytes of one group of G weights: packed codes, an f16 scale and a packed zero. */
export function bytesPerGroup(fmt: PackedFormat, G: number): number {
  return (G * fmt.bits) / 8 + 2 + fmt.bits / 8;
}

/** Average storage bits per weight with group size G (codes + scale + zero; g_idx excluded). */
export function bitsPerWeight(fmt: PackedFormat, G: number): number {
  return (bytesPerGroup(fmt, G) * 8) / G;
}

/**
 * Throws a RangeError naming `what` unless a (O, I) linear with group size G can be stored as a
 * GPTQ checkpoint that the usual loaders accept: supported bits, G divides I, and I, O multiples
 * of 32.
 */
export function checkGptqLayout(O: number, I: number, G: number, bits: number, what: string): void {
  const fmt = gptqFormat(bits);
  if (!Number.isInteger(G) || G < 1 || !Number.isInteger(I) || I % G !== 0) {
    throw new RangeError(`${what}: group size G = ${G} must divide in_features I = ${I}`);
  }
  if (!Number.isInteger(I) || I % fmt.inputMultiple !== 0) {
    throw new RangeError(`${what}: ${fmt.name} needs in_features I to be a multiple of ${fmt.inputMultiple}, got ${I}`);
  }
  if (!Number.isInteger(O) || O % fmt.outputMultiple !== 0) {
    throw new RangeError(`${what}: ${fmt.name} needs out_features O to be a multiple of ${fmt.outputMultiple}, got ${O}`);
  }
}

/** The `quantization_config` entry of config.json for an asymmetric GPTQ checkpoint. */
export function gptqQuantizationConfig(
  bits: number,
  G: number,
  checkpointFormat: GptqCheckpointFormat = 'gptq_v2',
): Record<string, unknown> {
  gptqFormat(bits);
  return {
    quant_method: 'gptq',
    bits,
    group_size: G,
    desc_act: false,
    sym: false,
    static_groups: false,
    true_sequential: true,
    lm_head: false,
    checkpoint_format: checkpointFormat,
  };
}

/** The config field a linear layer's in_features comes from, for messages. */
export function inFeaturesName(name: LinearName): string {
  switch (name) {
    case 'o_proj':
      return 'num_attention_heads*head_dim';
    case 'down_proj':
      return 'intermediate_size';
    default:
      return 'hidden_size';
  }
}

/**
 * Whether every linear layer of a block of `cfg` can be quantized with groups of G along its
 * input and stored as a GPTQ checkpoint at `bits`: the layers whose in_features G does not
 * divide (with the config field that sets it), then the first GPTQ layout problem. The one home
 * of this check; callers turn it into an error naming their flag or recipe key.
 */
export function modelLayoutProblems(cfg: ModelConfig, G: number, bits: number): { indivisible: { name: LinearName; inFeatures: number; field: string }[]; gptq: string | null } {
  const indivisible: { name: LinearName; inFeatures: number; field: string }[] = [];
  for (const name of LINEAR_NAMES) {
    const [, I] = linearShape(cfg, name);
    if (!Number.isInteger(G) || G < 1 || I % G !== 0) indivisible.push({ name, inFeatures: I, field: inFeaturesName(name) });
  }
  let gptq: string | null = null;
  if (indivisible.length === 0) {
    for (const name of LINEAR_NAMES) {
      const [O, I] = linearShape(cfg, name);
      try {
        checkGptqLayout(O, I, G, bits, `${name} (${O}x${I})`);
      } catch (e) {
        gptq = (e as Error).message;
        break;
      }
    }
  }
  return { indivisible, gptq };
}
