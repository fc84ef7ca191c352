// The GPTQ safetensors layout of a quantized linear layer (as AutoGPTQ / GPTQModel write it),
// for export and for reading GPTQ checkpoints back:
//   qweight (I*bits/32, O) int32  codes packed along the INPUT dim: column o holds the bit
//                                 stream of q[o, 0..I), value i at bit offset i*bits
//   qzeros  (I/G, O*bits/32) int32 zero points packed along the OUTPUT dim: row g holds the
//                                 bit stream of z[0..O, g]
//   scales  (I/G, O) f16           per-group scales, transposed from eqat's (O, I/G)
//   g_idx   (I,) int32             group of each input column, floor(i / G)
// Bit streams are little-endian over consecutive int32 words. For 2/4/8 bits each word holds
// 32/bits whole values; for 3 bits 32 values fill three words, value 10 taking bits 30-31 of the
// first word and bit 0 of the second, value 21 bit 31 of the second and bits 0-1 of the third.
// Zero points: checkpoint_format "gptq_v2" stores z as is, "gptq" (v1) stores z - 1.
import { checkBits, clampScale, qmax, roundZero } from './primitives.js';
import { gptqFormat, packedWords, type GptqCheckpointFormat } from './formats.js';

function checkCount(n: number, name: string, what: string): void {
  if (!Number.isInteger(n) || n < 1) throw new RangeError(`${what}: ${name} must be a positive integer, got ${n}`);
}

function checkLen(a: ArrayLike<number>, n: number, what: string, name: string, shape: string): void {
  if (a.length !== n) throw new RangeError(`${what}: ${name} has ${a.length} elements, expected ${n} ${shape}`);
}

/**
 * ORs value v (< 2^bits) into the bit stream whose k-th word is words[base + k*stride], at
 * value position k. Handles values that straddle two words (3 bits).
 */
function putBits(words: Int32Array, base: number, stride: number, k: number, v: number, bits: number): void {
  const bit = k * bits;
  const word = bit >>> 5;
  const shift = bit & 31;
  words[base + word * stride] |= v << shift;
  if (shift + bits > 32) words[base + (word + 1) * stride] |= v >>> (32 - shift);
}

/** Reads value position k of the bit stream laid out as in putBits. */
function getBits(words: Int32Array, base: number, stride: number, k: number, bits: number, mask: number): number {
  const bit = k * bits;
  const word = bit >>> 5;
  const shift = bit & 31;
  let v = words[base + word * stride]! >>> shift;
  if (shift + bits > 32) v |= words[base + (word + 1) * stride]! << (32 - shift);
  return v & mask;
}

/** Packs codes q (O, I) row-major into GPTQ qweight (I*bits/32, O). */
export function packQweight(q: Uint8Array, O: number, I: number, bits: number): Int32Array {
  const what = 'packQweight';
  const fmt = gptqFormat(bits);
  checkCount(O, 'out_features O', what);
  checkCount(I, 'in_features I', what);
  const rows = packedWords(fmt, I, `${what}: in_features I`);
  checkLen(q, O * I, what, 'q', `(O=${O}, I=${I})`);
  const qm = qmax(bits);
  const out = new Int32Array(rows * O); // (I*bits/32, O)
  for (let o = 0; o < O; o++) {
    for (let i = 0; i < I; i++) {
      const v = q[o * I + i]!;
      if (v > qm) throw new RangeError(`${what}: q[${o}, ${i}] = ${v} does not fit in ${bits} bits`);
      putBits(out, o, O, i, v, bits);
    }
  }
  return out;
}

/** Unpacks GPTQ qweight (I*bits/32, O) into codes (O, I) row-major. */
export function unpackQweight(qweight: Int32Array, O: number, I: number, bits: number): Uint8Array {
  const what = 'unpackQweight';
  const fmt = gptqFormat(bits);
  checkCount(O, 'out_features O', what);
  checkCount(I, 'in_features I', what);
  const rows = packedWords(fmt, I, `${what}: in_features I`);
  checkLen(qweight, rows * O, what, 'qweight', `(I*bits/32=${rows}, O=${O})`);
  const mask = qmax(bits);
  const q = new Uint8Array(O * I); // (O, I)
  for (let o = 0; o < O; o++) {
    for (let i = 0; i < I; i++) q[o * I + i] = getBits(qweight, o, O, i, bits, mask);
  }
  return q;
}

/**
 * Packs integer zero points z (O, groups) row-major into GPTQ qzeros (groups, O*bits/32).
 * "gptq_v2" stores z as is; "gptq" (v1) stores z - 1 and so cannot hold z = 0 (throws).
 */
export function packQzeros(
  z: Uint8Array, // (O, groups)
  O: number,
  groups: number,
  bits: number,
  format: GptqCheckpointFormat = 'gptq_v2',
): Int32Array {
  const what = 'packQzeros';
  const fmt = gptqFormat(bits);
  checkCount(O, 'out_features O', what);
  checkCount(groups, 'groups', what);
  const cols = packedWords(fmt, O, `${what}: out_features O`);
  checkLen(z, O * groups, what, 'z', `(O=${O}, groups=${groups})`);
  const qm = qmax(bits);
  const out = new Int32Array(groups * cols); // (groups, O*bits/32)
  for (let g = 0; g < groups; g++) {
    for (let o = 0; o < O; o++) {
      const zv = z[o * groups + g]!;
      if (zv > qm) throw new RangeError(`${what}: z[${o}, ${g}] = ${zv} exceeds qmax = ${qm} for ${bits} bits`);
      let v = zv;
      if (format === 'gptq') {
        if (zv === 0) {
          throw new RangeError(
            `${what}: z[${o}, ${g}] = 0 cannot be stored in GPTQ v1 (checkpoint_format "gptq" stores zero - 1); use "gptq_v2"`,
          );
        }
        v = zv - 1;
      }
      putBits(out, g * cols, 1, o, v, bits);
    }
  }
  return out;
}

/** Unpacks GPTQ qzeros (groups, O*bits/32) into integer zero points (O, groups) row-major. */
export function unpackQzeros(
  qzeros: Int32Array, // (groups, O*bits/32)
  O: number,
  groups: number,
  bits: number,
  format: GptqCheckpointFormat = 'gptq_v2',
): Uint8Array {
  const what = 'unpackQzeros';
  const fmt = gptqFormat(bits);
  checkCount(O, 'out_features O', what);
  checkCount(groups, 'groups', what);
  const cols = packedWords(fmt, O, `${what}: out_features O`);
  checkLen(qzeros, groups * cols, what, 'qzeros', `(groups=${groups}, O*bits/32=${cols})`);
  const qm = qmax(bits);
  const z = new Uint8Array(O * groups); // (O, groups)
  for (let g = 0; g < groups; g++) {
    for (let o = 0; o < O; o++) {
      let v = getBits(qzeros, g * cols, 1, o, bits, qm);
      if (format === 'gptq') {
        v += 1;
        if (v > qm) {
          throw new RangeError(`${what}: zero point ${v} at (${o}, ${g}) of a GPTQ v1 checkpoint exceeds qmax = ${qm}`);
        }
      }
      z[o * groups + g] = v;
    }
  }
  return z;
}

/** g_idx (I,): the group of each input column, floor(i / G). */
export function gIdx(I: number, G: number): Int32Array {
  const what = 'gIdx';
  checkCount(I, 'in_features I', what);
  checkCount(G, 'group size G', what);
  if (I % G !== 0) throw new RangeError(`${what}: group size G = ${G} does not divide in_features I = ${I}`);
  const g = new Int32Array(I);
  for (let i = 0; i < I; i++) g[i] = Math.floor(i / G);
  return g;
}

/** Scales in GPTQ layout: the clamped s_c of scale (O, groups), transposed to (groups, O). */
export function gptqScales(scale: Float32Array, O: number, groups: number): Float32Array {
  const what = 'gptqScales';
  checkCount(O, 'out_features O', what);
  checkCount(groups, 'groups', what);
  checkLen(scale, O * groups, what, 'scale', `(O=${O}, groups=${groups})`);
  const out = new Float32Array(groups * O); // (groups, O)
  for (let o = 0; o < O; o++) for (let g = 0; g < groups; g++) out[g * O + o] = clampScale(scale[o * groups + g]!);
  return out;
}

/** Integer zero points z_r = clamp(round(z), 0, qmax) of the float zero parameter (O, groups). */
export function integerZeros(zero: Float32Array, bits: number): Uint8Array {
  checkBits(bits, 'integerZeros');
  const qm = qmax(bits);
  const z = new Uint8Array(zero.length); // same shape as zero
  for (let k = 0; k < zero.length; k++) z[k] = roundZero(zero[k]!, qm);
  return z;
}
