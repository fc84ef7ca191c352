// GGUF export (src/export/gguf.ts) of eqat quantized checkpoints, checked three ways:
//   1. with this file's own GGUF parser and block decoder: every written weight decodes exactly
//      to eqat's dequantized weight (after undoing llama.cpp's q/k row permutation), norms and
//      embeddings are bit-identical, and a lossy mapping's reported error is what decoding shows;
//   2. with node-llama-cpp's GGUF reader (metadata and tensor infos);
//   3. with llama.cpp itself through node-llama-cpp: the bundled llama-tiny quantized to 2, 3 and
//      4 bits (RTN) gives the same greedy tokens as eqat and a perplexity within 1% of eqat's on
//      the same 512-token windows; the tokenizer (byte-level "gpt-2", "llama-bpe", and
//      SentencePiece-style) tokenizes text exactly as tokenizer.json does.
// The ggml type table (src/export/ggml-types.ts) on its own: every type decodes as this file's
// decoder does, every integer type's exact encoding of codes decodes back to (q − z)·d, and the
// reference encoders stay within a per-type error ceiling.
// Bad requests (lossy mapping without allowLossy, group size not a multiple of 32, qwen3 with biases, a
// full-precision model) fail before anything is written. The llama.cpp checks skip when
// node-llama-cpp is not installed; one llama-small check runs when ../shared (or
// $EQAT_SHARED_DIR) has it.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportGguf, type GgufExportReport } from '../../src/export/gguf.js';
import { GGML_INTEGER_TYPES, GGUF_TYPE_TRAITS, decodeValues, encodeValues, holdsEveryCode, type GgmlIntegerTypeName, type GgmlTypeName } from '../../src/export/ggml-types.js';
import { f16ToF32Ref, f32ToF16Ref } from '../../src/engine/dtype.js';
import { Rng } from '../../src/engine/random.js';
import { WeightSource } from '../../src/model/weights.js';
import { Model } from '../../src/model/model.js';
import { allocBlockParams, BLOCK_LINEARS, type BlockLinear } from '../../src/model/block.js';
import { windowsNll } from '../../src/pipeline/eval.js';
import { evalWindows } from '../../src/data/windows.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { REPO, TINY, readGolden, sharedModel, writeRtn } from '../golden.js';
import { argmax, llamaGreedy, llamaNll, loadLlamaCpp, type NlcLlama, type NlcModule } from './runtimes.js';

const EVAL_TEXT = join(REPO, 'fixtures', 'text', 'eval-sample.txt');
const CALIB_TEXT = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const WORK = mkdtempSync(join(tmpdir(), 'eqat-gguf-'));
process.env['EQAT_CACHE_DIR'] ??= join(WORK, 'token-cache');

// ---------------------------------------------------------------------------------------------
// An independent GGUF reader and block decoder

interface GgufTensor {
  ne: number[];
  type: number;
  offset: number;
}
interface GgufFile {
  version: number;
  kv: Map<string, unknown>;
  /** File offset of each metadata value (after its type tag). */
  valueAt: Map<string, number>;
  tensors: Map<string, GgufTensor>;
  names: string[];
  dataStart: number;
  buf: Buffer;
}

function parseGguf(path: string): GgufFile {
  const buf = readFileSync(path);
  let p = 0;
  const take = (n: number): number => {
    const at = p;
    p += n;
    return at;
  };
  const u32 = (): number => buf.readUInt32LE(take(4));
  const u64 = (): number => Number(buf.readBigUInt64LE(take(8)));
  const str = (): string => {
    const n = u64();
    return buf.toString('utf8', take(n), p);
  };
  const value = (type: number): unknown => {
    switch (type) {
      case 0:
        return buf.readUInt8(take(1));
      case 1:
        return buf.readInt8(take(1));
      case 2:
        return buf.readUInt16LE(take(2));
      case 3:
        return buf.readInt16LE(take(2));
      case 4:
        return u32();
      case 5:
        return buf.readInt32LE(take(4));
      case 6:
        return buf.readFloatLE(take(4));
      case 7:
        return buf.readUInt8(take(1)) !== 0;
      case 8:
        return str();
      case 9: {
        const et = u32();
        const n = u64();
        const out: unknown[] = [];
        for (let i = 0; i < n; i++) out.push(value(et));
        return out;
      }
      case 10:
        return u64();
      case 11:
        return Number(buf.readBigInt64LE(take(8)));
      case 12:
        return buf.readDoubleLE(take(8));
      default:
        throw new Error(`unknown gguf value type ${type}`);
    }
  };
  assert.equal(buf.toString('latin1', 0, 4), 'GGUF', 'magic');
  p = 4;
  const version = u32();
  const nTensors = u64();
  const nKv = u64();
  const kv = new Map<string, unknown>();
  const valueAt = new Map<string, number>();
  for (let i = 0; i < nKv; i++) {
    const key = str();
    const type = u32();
    valueAt.set(key, p);
    kv.set(key, value(type));
  }
  const tensors = new Map<string, GgufTensor>();
  const names: string[] = [];
  for (let i = 0; i < nTensors; i++) {
    const name = str();
    const nd = u32();
    const ne: number[] = [];
    for (let d = 0; d < nd; d++) ne.push(u64());
    const type = u32();
    const offset = u64();
    tensors.set(name, { ne, type, offset });
    names.push(name);
  }
  const align = (kv.get('general.alignment') as number | undefined) ?? 32;
  return { version, kv, valueAt, tensors, names, dataStart: Math.ceil(p / align) * align, buf };
}

function halfBitsToFloat(h: number): number {
  const e = (h >> 10) & 31;
  const m = h & 1023;
  const v = e === 0 ? m / 1024 / 16384 : e === 31 ? (m ? NaN : Infinity) : (1 + m / 1024) * Math.pow(2, e - 15);
  return h & 0x8000 ? -v : v;
}

/** Decodes a whole tensor to f32 as llama.cpp's dequantize_row_* would. */
function decodeTensor(g: GgufFile, name: string): { values: Float32Array; rows: number; cols: number; type: number } {
  const t = g.tensors.get(name);
  assert.ok(t, `tensor ${name} missing`);
  const cols = t.ne[0]!;
  const rows = t.ne.slice(1).reduce((a, b) => a * b, 1);
  const n = rows * cols;
  const base = g.dataStart + t.offset;
  const b = g.buf;
  const out = new Float32Array(n);
  const fr = Math.fround;
  const blockBytes: Record<number, number> = { 2: 18, 3: 20, 6: 22, 8: 34 };
  for (let e = 0; e < n; e++) {
    if (t.type === 0) out[e] = b.readFloatLE(base + 4 * e);
    else if (t.type === 1) out[e] = halfBitsToFloat(b.readUInt16LE(base + 2 * e));
    else if (t.type === 30) out[e] = new Float32Array(new Uint32Array([b.readUInt16LE(base + 2 * e) << 16]).buffer)[0]!;
    else {
      const blk = base + Math.floor(e / 32) * blockBytes[t.type]!;
      const j = e % 32;
      const d = halfBitsToFloat(b.readUInt16LE(blk));
      const nibbleAt = (qs: number): number => {
        const byte = b[blk + qs + (j % 16)]!;
        return j < 16 ? byte & 15 : byte >> 4;
      };
      if (t.type === 2) out[e] = fr((nibbleAt(2) - 8) * d);
      else if (t.type === 3) out[e] = fr(fr(nibbleAt(4) * d) + halfBitsToFloat(b.readUInt16LE(blk + 2)));
      else if (t.type === 6) out[e] = fr(((nibbleAt(6) | (((b.readUInt32LE(blk + 2) >>> j) & 1) << 4)) - 16) * d);
      else if (t.type === 8) out[e] = fr(b.readInt8(blk + 2 + j) * d);
      else throw new Error(`no decoder for ggml type ${t.type}`);
    }
  }
  return { values: out, rows, cols, type: t.type };
}

/** For each source row (HF order), the row llama.cpp's q/k permutation moves it to. */
function permutedRowOf(sourceRow: number, headDim: number): number {
  const head = Math.floor(sourceRow / headDim);
  const within = sourceRow % headDim;
  const half = Math.floor(within / (headDim / 2));
  const pair = within % (headDim / 2);
  return head * headDim + 2 * pair + half;
}

const LINEAR_NAME: Record<BlockLinear, string> = {
  q: 'attn_q',
  k: 'attn_k',
  v: 'attn_v',
  o: 'attn_output',
  gate: 'ffn_gate',
  up: 'ffn_up',
  down: 'ffn_down',
};

/** Compares every tensor of `g` with eqat's f32 weights of `dir`; returns the max abs difference per kind. */
function compareWithEqat(g: GgufFile, dir: string): { linears: number; others: number; unpermutedQ: number } {
  const src = WeightSource.open(dir);
  try {
    const cfg = src.cfg;
    const D = cfg.headDim;
    let linears = 0;
    let others = 0;
    let unpermutedQ = 0;
    const diff = (a: Float32Array, b: Float32Array): number => {
      assert.equal(a.length, b.length);
      let m = 0;
      for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
      return m;
    };
    others = Math.max(others, diff(decodeTensor(g, 'token_embd.weight').values, src.embedding().f32));
    others = Math.max(others, diff(decodeTensor(g, 'output.weight').values, src.lmHead().f32));
    others = Math.max(others, diff(decodeTensor(g, 'output_norm.weight').values, src.finalNorm().f32));
    const { params } = allocBlockParams(cfg);
    for (let i = 0; i < cfg.numLayers; i++) {
      src.loadBlock(i, params);
      others = Math.max(others, diff(decodeTensor(g, `blk.${i}.attn_norm.weight`).values, params.inputNorm.f32));
      others = Math.max(others, diff(decodeTensor(g, `blk.${i}.ffn_norm.weight`).values, params.postNorm.f32));
      for (const [key] of BLOCK_LINEARS) {
        const w = params[key];
        const [O, I] = w.shape as [number, number];
        const dec = decodeTensor(g, `blk.${i}.${LINEAR_NAME[key]}.weight`);
        assert.deepEqual([dec.rows, dec.cols], [O, I], `blk.${i}.${LINEAR_NAME[key]} shape`);
        const expect = new Float32Array(O * I);
        for (let r = 0; r < O; r++) {
          const to = key === 'q' || key === 'k' ? permutedRowOf(r, D) : r;
          expect.set(w.f32.subarray(r * I, (r + 1) * I), to * I);
        }
        linears = Math.max(linears, diff(dec.values, expect));
        if (key === 'q') unpermutedQ = Math.max(unpermutedQ, diff(dec.values, w.f32));
      }
    }
    return { linears, others, unpermutedQ };
  } finally {
    src.close();
  }
}

// ---------------------------------------------------------------------------------------------
// The ggml type table

const TYPE_NAMES = Object.keys(GGUF_TYPE_TRAITS) as GgmlTypeName[];

/** A random f16 value of either sign with magnitude in [2^-10, 2^4). */
function randomF16(rng: Rng): number {
  return f16ToF32Ref((rng.int(0, 2) << 15) | (rng.int(5, 19) << 10) | rng.int(0, 1024));
}

/** This file's decoder applied to `data` as one tensor of n values of `type`. */
function decodeIndependently(type: GgmlTypeName, data: Uint8Array, n: number): Float32Array {
  const tensors = new Map([['t', { ne: [n], type: GGUF_TYPE_TRAITS[type].id, offset: 0 }]]);
  const g = { tensors, dataStart: 0, buf: Buffer.from(data.buffer, data.byteOffset, data.byteLength) } as unknown as GgufFile;
  return decodeTensor(g, 't').values;
}

test('type table: every type decodes random bytes as this file\'s decoder does (ids, block sizes and layouts agree)', () => {
  const rng = new Rng(11);
  for (const type of TYPE_NAMES) {
    const { blockElements, blockBytes } = GGUF_TYPE_TRAITS[type];
    const blocks = 257;
    const data = new Uint8Array(blocks * blockBytes);
    for (let i = 0; i < data.length; i++) data[i] = rng.int(0, 256);
    const n = blocks * blockElements;
    const ours = decodeValues(type, data, n);
    const theirs = decodeIndependently(type, data, n);
    for (let i = 0; i < n; i++) {
      const same = Object.is(ours[i], theirs[i]) || (Number.isNaN(ours[i]) && Number.isNaN(theirs[i]));
      assert.ok(same, `${type}: value ${i} decodes to ${ours[i]}, this file's decoder gives ${theirs[i]}`);
    }
  }
});

test('type table: exact codes of every integer type round-trip (encode → decode = (q − z)·d) and out-of-range codes are refused', () => {
  const rng = new Rng(12);
  const n = 32;
  const k = new Int32Array(n);
  for (const type of GGML_INTEGER_TYPES) {
    const traits = GGUF_TYPE_TRAITS[type];
    const codes = traits.exact;
    assert.equal(traits.blockElements, n, `${type}: blocks of 32`);
    let exactBlocks = 0;
    for (let trial = 0; trial < 500; trial++) {
      const d = randomF16(rng);
      // x = k + c over the whole code range (both ends present), c fixed or any integer
      const c = codes.offset ?? rng.int(-40, 40);
      for (let j = 0; j < n; j++) k[j] = rng.int(codes.min, codes.max + 1) - c;
      k[0] = codes.min - c;
      k[n - 1] = codes.max - c;
      const kmin = Math.min(...k);
      const kmax = Math.max(...k);
      const shift = codes.shift(kmin, kmax, d, c);
      assert.notEqual(shift, null, `${type}: codes [${kmin}, ${kmax}] fit`);
      const block = new Uint8Array(traits.blockBytes);
      const exact = codes.encode(k, d, shift!, block);
      if (codes.offset !== null) assert.equal(exact, true, `${type}: a fixed shift is always exact`);
      const m = Math.fround(-shift! * d);
      assert.equal(exact, f16ToF32Ref(f32ToF16Ref(m)) === m, `${type}: exact iff the min −c·d is an f16 value`);
      const decoded = decodeValues(type, block, n);
      for (let j = 0; j < n; j++) {
        const want = Math.fround(k[j]! * d);
        // === and not Object.is: Q4_1's x·d + m gives +0 where (q − z)·d is −0
        if (exact) assert.ok(decoded[j] === want, `${type}: code ${k[j]} with d = ${d} decodes to ${decoded[j]}, not ${want}`);
        else assert.ok(Math.abs(decoded[j]! - want) <= Math.abs(m) * 2 ** -11 + Math.abs(want) * 2 ** -23, `${type}: code ${k[j]} with d = ${d}, min rounded`);
      }
      if (exact) exactBlocks++;
      // one level more than the codes hold is refused
      assert.equal(codes.shift(kmin - 1, kmax, d, c), null, `${type}: [${kmin - 1}, ${kmax}] refused`);
      assert.equal(codes.shift(kmin, kmax + 1, d, c), null, `${type}: [${kmin}, ${kmax + 1}] refused`);
    }
    assert.ok(exactBlocks > 0, `${type}: some blocks exact`);
  }
  const holds: Record<GgmlIntegerTypeName, [number, number] | null> = { Q4_0: [-8, 7], Q4_1: null, Q5_0: [-16, 15], Q8_0: [-128, 127] };
  for (const type of GGML_INTEGER_TYPES) {
    const range = holds[type];
    if (range === null) {
      assert.equal(holdsEveryCode(type, 0, 0), false, `${type}: exactness depends on the scale`);
      continue;
    }
    const [lo, hi] = range;
    assert.equal(holdsEveryCode(type, lo, hi), true, `${type} holds [${lo}, ${hi}]`);
    assert.equal(holdsEveryCode(type, lo - 1, hi), false, `${type} does not hold ${lo - 1}`);
    assert.equal(holdsEveryCode(type, lo, hi + 1), false, `${type} does not hold ${hi + 1}`);
  }
});

test('type table: reference encoders stay within their error ceilings on random blocks', (t) => {
  const rng = new Rng(13);
  // per 32-value block, as a fraction of the block's largest magnitude (integer types), or of
  // each value (float types, plus f16's subnormal spacing)
  const blockCeiling: Record<GgmlIntegerTypeName, number> = { Q4_0: 1 / 8, Q4_1: 1 / 8, Q5_0: 1 / 16, Q8_0: 1 / 128 };
  const valueCeiling: Record<Exclude<GgmlTypeName, GgmlIntegerTypeName>, number> = { F32: 0, F16: 2 ** -11, BF16: 2 ** -8 };
  const blocks = 200;
  const w = new Float32Array(blocks * 32);
  for (let b = 0; b < blocks; b++) {
    const scale = 2 ** rng.int(-6, 5);
    for (let j = 0; j < 32; j++) w[b * 32 + j] = scale * rng.normal();
  }
  w.fill(0, 0, 32); // an all-zero block
  w.fill(0.3, 32, 64); // a constant block
  w.fill(0, 64, 96);
  w[70] = -2.5; // a single non-zero value
  for (const type of TYPE_NAMES) {
    const decoded = decodeValues(type, encodeValues(type, w), w.length);
    let worst = 0;
    for (let b = 0; b < blocks; b++) {
      let amax = 0;
      for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(w[b * 32 + j]!));
      for (let j = 0; j < 32; j++) {
        const i = b * 32 + j;
        const err = Math.abs(decoded[i]! - w[i]!);
        const ceiling =
          GGUF_TYPE_TRAITS[type].exact !== null
            ? 1.02 * amax * blockCeiling[type as GgmlIntegerTypeName]
            : valueCeiling[type as Exclude<GgmlTypeName, GgmlIntegerTypeName>] * Math.abs(w[i]!) + (type === 'F16' ? 2 ** -25 : 0);
        assert.ok(err <= ceiling, `${type}: value ${i} = ${w[i]} decodes to ${decoded[i]} (error ${err} > ${ceiling})`);
        if (amax > 0) worst = Math.max(worst, err / amax);
      }
    }
    assert.ok(decoded.subarray(0, 32).every((v) => v === 0), `${type}: zeros stay zero`);
    t.diagnostic(`${type}: largest error ${worst.toExponential(3)} of the block's largest magnitude`);
  }
});

// ---------------------------------------------------------------------------------------------
// node-llama-cpp (optional) and the quantized fixtures

const llamaRuntime = await loadLlamaCpp();
const nlc: NlcModule | null = llamaRuntime.nlc;
const llama: NlcLlama | null = llamaRuntime.llama;
const SKIP_NLC: string | false = llamaRuntime.skip;

async function llamaCpp(): Promise<NlcLlama> {
  assert.ok(llama, 'llama.cpp is loaded');
  return llama;
}

interface Quantized {
  bits: number;
  groupSize: number;
  dir: string;
  gguf: string;
  report: GgufExportReport;
}
const QUANT: Quantized[] = [];

function quantizeRtn(model: string, bits: number, groupSize: number, name: string): Promise<string> {
  return writeRtn(model, join(WORK, name), bits, groupSize);
}

before(async () => {
  for (const [bits, groupSize] of [
    [2, 64],
    [3, 32],
    [4, 32],
  ] as const) {
    const dir = await quantizeRtn(TINY, bits, groupSize, `tiny-w${bits}g${groupSize}`);
    const gguf = join(WORK, `tiny-w${bits}g${groupSize}.gguf`);
    const report = await exportGguf(dir, gguf);
    QUANT.push({ bits, groupSize, dir, gguf, report });
  }
});

after(async () => {
  await llama?.dispose();
  rmSync(WORK, { recursive: true, force: true });
});

// ---------------------------------------------------------------------------------------------
// Writer-side checks (no llama.cpp needed)

test("'auto' export: exact types per bit width, every weight decodes to eqat's exactly", (t) => {
  const expectType: Record<number, [string, number]> = { 2: ['Q4_0', 2], 3: ['Q4_0', 2], 4: ['Q5_0', 6] };
  for (const q of QUANT) {
    const [typeName, ggmlType] = expectType[q.bits]!;
    assert.equal(q.report.exact, true, `w${q.bits}: report.exact`);
    assert.equal(q.report.maxAbsWeightError, 0);
    assert.deepEqual(q.report.types, { F16: 2, F32: 9, [typeName]: 28 });
    assert.equal(q.report.tensors, 39);
    const g = parseGguf(q.gguf);
    assert.equal(g.version, 3);
    assert.equal(q.report.bytes, g.buf.length);
    assert.equal(g.tensors.get('blk.0.attn_q.weight')!.type, ggmlType);
    assert.equal(g.tensors.get('token_embd.weight')!.type, 1, 'f16 source embedding stays F16');
    for (const name of g.names) assert.equal((g.dataStart + g.tensors.get(name)!.offset) % 32, 0, `${name} aligned`);
    const cmp = compareWithEqat(g, q.dir);
    assert.equal(cmp.linears, 0, `w${q.bits}: linears decode exactly`);
    assert.equal(cmp.others, 0, `w${q.bits}: norms/embeddings exact`);
    assert.ok(cmp.unpermutedQ > 0, 'the q permutation is real: without undoing it the rows differ');
    t.diagnostic(`w${q.bits}g${q.groupSize} → ${typeName}: ${q.report.bytes} bytes, max |decoded − eqat| = ${cmp.linears} (linears), ${cmp.others} (others)`);
  }
});

test('explicit types: Q8_0 / Q5_0 / Q4_1 of 2- and 3-bit codes are exact; Q4_1 of 4-bit codes is refused unless allowLossy, which reports the decoded error', async (t) => {
  const w2 = QUANT.find((q) => q.bits === 2)!;
  const w4 = QUANT.find((q) => q.bits === 4)!;
  for (const type of ['q8_0', 'q5_0', 'q4_1'] as const) {
    const path = join(WORK, `w2-${type}.gguf`);
    const r = await exportGguf(w2.dir, path, { type });
    const cmp = compareWithEqat(parseGguf(path), w2.dir);
    assert.equal(cmp.linears, 0, `${type}: exact decode`);
    assert.equal(r.exact, true, `${type}: report.exact`);
    t.diagnostic(`w2 as ${type}: exact, ${r.bytes} bytes`);
  }
  const lossyPath = join(WORK, 'w4-q4_1.gguf');
  await assert.rejects(exportGguf(w4.dir, lossyPath, { type: 'q4_1' }), /not exact.*allowLossy/s);
  assert.equal(existsSync(lossyPath), false, 'nothing written');
  assert.deepEqual(readdirSync(WORK).filter((f) => f.includes('w4-q4_1')), [], 'no partial file left');
  const r = await exportGguf(w4.dir, lossyPath, { type: 'q4_1', allowLossy: true });
  const cmp = compareWithEqat(parseGguf(lossyPath), w4.dir);
  assert.equal(r.exact, false);
  assert.ok(r.maxAbsWeightError > 0 && r.maxAbsWeightError < 1e-3, `q4_1 error ${r.maxAbsWeightError}`);
  assert.equal(r.maxAbsWeightError, cmp.linears, 'reported error = error of the decoded file');
  assert.ok(r.bytes < w4.report.bytes, 'Q4_1 is smaller than Q5_0');
  t.diagnostic(`w4 as q4_1 (allowLossy): max abs weight error ${r.maxAbsWeightError.toExponential(3)}, ${r.bytes} vs ${w4.report.bytes} bytes (Q5_0)`);

  // 8-bit codes: q − z spans up to ±255, beyond Q8_0's int8, so even 'auto' is lossy here
  const w8 = await quantizeRtn(TINY, 8, 32, 'tiny-w8g32');
  const w8Path = join(WORK, 'w8.gguf');
  await assert.rejects(exportGguf(w8, w8Path), /no GGUF block type holds these 8-bit codes exactly/);
  assert.equal(existsSync(w8Path), false);
  const r8 = await exportGguf(w8, w8Path, { allowLossy: true });
  assert.equal(r8.types['Q8_0'], 28);
  assert.equal(r8.maxAbsWeightError, compareWithEqat(parseGguf(w8Path), w8).linears, 'reported error = error of the decoded file');
  t.diagnostic(`w8 as Q8_0 (allowLossy): max abs weight error ${r8.maxAbsWeightError.toExponential(3)}`);

  const embPath = join(WORK, 'w4-embq8.gguf');
  await assert.rejects(exportGguf(w4.dir, embPath, { embeddingType: 'q8_0' }), /not exact/);
  const re = await exportGguf(w4.dir, embPath, { embeddingType: 'q8_0', allowLossy: true });
  assert.equal(re.types['Q8_0'], 2);
  assert.equal(re.maxAbsWeightError, compareWithEqat(parseGguf(embPath), w4.dir).others);
  t.diagnostic(`embeddings as q8_0 (allowLossy): max abs error ${re.maxAbsWeightError.toExponential(3)}`);
});

test("type 'f32': every linear weight stored as its exact f32 value, q/k rows permuted as in the integer export", async (t) => {
  for (const q of QUANT.filter((x) => x.bits === 2 || x.bits === 4)) {
    const path = join(WORK, `w${q.bits}-f32.gguf`);
    const r = await exportGguf(q.dir, path, { type: 'f32' });
    const g = parseGguf(path);
    const cmp = compareWithEqat(g, q.dir);
    assert.equal(cmp.linears, 0, `w${q.bits}: decoded linears equal eqat's weights`);
    assert.ok(cmp.unpermutedQ > 0, `w${q.bits}: q rows are permuted for llama.cpp's RoPE`);
    assert.equal(r.exact, true);
    assert.equal(r.types['F32'], 28 + 9, `w${q.bits}: 28 linears and 9 norms as F32 (${JSON.stringify(r.types)})`);
    assert.equal(g.kv.get('general.file_type'), 0, 'LLAMA_FTYPE_ALL_F32');
    const linears = g.names.filter((n) => /^blk\.\d+\.(attn_(q|k|v|output)|ffn_(gate|up|down))\.weight$/.test(n));
    assert.equal(linears.length, 28);
    for (const n of linears) assert.equal(g.tensors.get(n)!.type, 0, `${n} is F32`);
    t.diagnostic(`w${q.bits} as f32: exact, ${r.bytes} bytes (integer export ${q.report.bytes})`);
  }
});

test('bad requests fail before writing anything', async () => {
  const out = join(WORK, 'bad.gguf');
  const nothingWritten = (): void => assert.deepEqual(readdirSync(WORK).filter((f) => f.startsWith('bad.gguf')), []);
  // full precision model
  await assert.rejects(exportGguf(TINY, out), /full-precision checkpoint/);
  nothingWritten();
  // group size 16
  const g16 = await quantizeRtn(TINY, 2, 16, 'tiny-w2g16');
  await assert.rejects(exportGguf(g16, out), /group size 16 is not a multiple of 32/);
  nothingWritten();
  // qwen3 with attention biases (llama.cpp's qwen3 architecture has none)
  const qwen = join(WORK, 'qwen3');
  cpSync(QUANT[0]!.dir, qwen, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(qwen, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(qwen, 'config.json'), JSON.stringify({ ...cfg, model_type: 'qwen3', architectures: ['Qwen3ForCausalLM'], attention_bias: true }));
  await assert.rejects(exportGguf(qwen, out), /self_attn\.q_proj\.bias.* of a qwen3 checkpoint have no place in llama\.cpp's "qwen3" architecture/);
  nothingWritten();
  // unknown option values
  await assert.rejects(exportGguf(QUANT[0]!.dir, out, { type: 'q3_k' as 'q4_0' }), /type must be/);
  nothingWritten();
  // an unsupported pre-tokenizer
  const oddTok = join(WORK, 'odd-tokenizer');
  cpSync(QUANT[0]!.dir, oddTok, { recursive: true });
  const tj = JSON.parse(readFileSync(join(oddTok, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(oddTok, 'tokenizer.json'), JSON.stringify({ ...tj, pre_tokenizer: { type: 'Whitespace' } }));
  await assert.rejects(exportGguf(oddTok, out), /pre_tokenizer .*Whitespace.* not one the GGUF export can map/);
  nothingWritten();
});

test('node-llama-cpp reads the metadata and tensor infos', { skip: SKIP_NLC }, async () => {
  const q = QUANT[0]!;
  const info = await nlc!.readGgufFileInfo(q.gguf, { readTensorInfo: true });
  const flat = new Map<string, unknown>();
  const walk = (o: unknown, prefix: string): void => {
    if (o && typeof o === 'object' && !Array.isArray(o)) for (const [k, v] of Object.entries(o)) walk(v, prefix ? `${prefix}.${k}` : k);
    else flat.set(prefix, o);
  };
  walk(info.metadata, '');
  const cfg = JSON.parse(readFileSync(join(q.dir, 'config.json'), 'utf8')) as Record<string, number>;
  const want: Record<string, unknown> = {
    'general.architecture': 'llama',
    'general.file_type': 2,
    'general.quantization_version': 2,
    'llama.context_length': cfg['max_position_embeddings'],
    'llama.embedding_length': cfg['hidden_size'],
    'llama.block_count': cfg['num_hidden_layers'],
    'llama.feed_forward_length': cfg['intermediate_size'],
    'llama.attention.head_count': cfg['num_attention_heads'],
    'llama.attention.head_count_kv': cfg['num_key_value_heads'],
    'llama.rope.dimension_count': cfg['head_dim'],
    'llama.rope.freq_base': 10000,
    'llama.vocab_size': 4096,
    'tokenizer.ggml.model': 'gpt2',
    'tokenizer.ggml.pre': 'gpt-2',
    'tokenizer.ggml.bos_token_id': 0,
    'tokenizer.ggml.eos_token_id': 1,
    'tokenizer.ggml.add_bos_token': true,
  };
  for (const [k, v] of Object.entries(want)) assert.equal(flat.get(k), v, k);
  assert.ok(Math.abs((flat.get('llama.attention.layer_norm_rms_epsilon') as number) - 1e-5) < 1e-12);
  const tj = JSON.parse(readFileSync(join(q.dir, 'tokenizer.json'), 'utf8')) as { model: { merges: unknown[] } };
  assert.equal((flat.get('tokenizer.ggml.tokens') as unknown[]).length, 4096);
  assert.equal((flat.get('tokenizer.ggml.merges') as unknown[]).length, tj.model.merges.length);
  const ours = parseGguf(q.gguf);
  assert.equal(info.tensorInfo!.length, ours.names.length);
  for (const ti of info.tensorInfo!) {
    const mine = ours.tensors.get(ti.name);
    assert.ok(mine, ti.name);
    assert.deepEqual(ti.dimensions.map(Number), mine.ne, `${ti.name} dims`);
    assert.equal(ti.ggmlType, mine.type, `${ti.name} type`);
  }
  assert.deepEqual(ours.tensors.get('blk.0.attn_k.weight')!.ne, [128, 64]);
});

// ---------------------------------------------------------------------------------------------
// llama.cpp runs the exported files

/**
 * How far llama.cpp's logits may sit from eqat's on the same prefix (absolute, in logits). Its
 * k-quant dot products round the activations to 8 bits per block, so its logits differ from
 * eqat's f32 ones by a few hundredths (up to 0.12 seen on the llama-tiny and llama-small exports).
 * A greedy step whose two best logits are closer than that can go either way in either runtime,
 * which is why the tokens alone are not the check.
 */
const LOGIT_TOLERANCE = 0.25;

/** llama.cpp's greedy path from a prompt, scored by eqat on the same (teacher-forced) prefixes. */
interface GreedyComparison {
  steps: number;
  /** Steps whose llama.cpp token is also eqat's argmax. */
  agree: number;
  /** Largest |llama.cpp − eqat| over each step's five largest llama.cpp logits. */
  maxLogitDiff: number;
  /** Largest (eqat's best logit − eqat's logit of llama.cpp's token) over the steps. */
  maxShortfall: number;
}

/** Greedy agreement and perplexity of llama.cpp on `gguf` against eqat on `dir`. */
async function compareInference(
  dir: string,
  gguf: string,
  prompt: number[],
  opts: { greedy: number; windows: number; seqlen: number },
): Promise<{ greedy: GreedyComparison | null; pplEqat: number; pplLlama: number }> {
  const model = await (await llamaCpp()).loadModel({ modelPath: gguf, gpuLayers: 0 });
  const ctx = await model.createContext({ contextSize: opts.seqlen, batchSize: opts.seqlen, sequences: 1, threads: 1 });
  try {
    const seq = ctx.getSequence();
    const src = WeightSource.open(dir);
    try {
      let greedy: GreedyComparison | null = null;
      if (opts.greedy > 0) {
        const steps = await llamaGreedy(seq, prompt, opts.greedy);
        const ids = [...prompt, ...steps.map((s) => s.token)];
        const V = src.cfg.vocabSize;
        const logits = Model.load(src).forward(Int32Array.from(ids), 1, ids.length).f32; // (T, V)
        let agree = 0, maxLogitDiff = 0, maxShortfall = 0;
        steps.forEach((step, i) => {
          const row = logits.subarray((prompt.length - 1 + i) * V, (prompt.length + i) * V); // (V) after prompt + i tokens
          const best = argmax(row);
          if (best === step.token) agree++;
          for (const [id, logit] of step.top) maxLogitDiff = Math.max(maxLogitDiff, Math.abs(logit - row[id]!));
          maxShortfall = Math.max(maxShortfall, row[best]! - row[step.token]!);
        });
        greedy = { steps: steps.length, agree, maxLogitDiff, maxShortfall };
      }
      const { windows, count } = evalWindows(readFileSync(EVAL_TEXT, 'utf8'), loadTokenizer(dir), opts.seqlen);
      const n = Math.min(count, opts.windows);
      assert.ok(n >= 1, 'at least one evaluation window');
      const eqatNll = windowsNll(src, windows, n, opts.seqlen, { quiet: true }).nll;
      const llamaNllValue = await llamaNll(seq, windows, n, opts.seqlen);
      return { greedy, pplEqat: Math.exp(eqatNll), pplLlama: Math.exp(llamaNllValue) };
    } finally {
      src.close();
    }
  } finally {
    await ctx.dispose();
    await model.dispose();
  }
}

/**
 * llama.cpp's greedy logits match eqat's within LOGIT_TOLERANCE at every step, and each token it
 * picks is eqat's argmax or a near tie there (within twice the tolerance).
 */
function assertGreedyAgrees(g: GreedyComparison | null, what: string): string {
  assert.ok(g && g.steps > 0, `${what}: greedy steps compared`);
  assert.ok(g.maxLogitDiff <= LOGIT_TOLERANCE, `${what}: llama.cpp's top logits differ from eqat's by up to ${g.maxLogitDiff}`);
  assert.ok(g.maxShortfall <= 2 * LOGIT_TOLERANCE, `${what}: llama.cpp picked a token ${g.maxShortfall} logits below eqat's best`);
  return `greedy: llama.cpp's token is eqat's argmax at ${g.agree}/${g.steps} steps (otherwise within ${g.maxShortfall.toFixed(4)}), top-5 logits within ${g.maxLogitDiff.toFixed(4)}`;
}

test('llama.cpp on quantized llama-tiny (2/3/4-bit): greedy logits match eqat\'s, perplexity within 1%', { skip: SKIP_NLC }, async (t) => {
  const golden = readGolden(TINY);
  for (const q of QUANT) {
    const r = await compareInference(q.dir, q.gguf, golden.greedy.prompt_ids, { greedy: 16, windows: 3, seqlen: 512 });
    const greedy = assertGreedyAgrees(r.greedy, `w${q.bits}g${q.groupSize}`);
    t.diagnostic(
      `w${q.bits}g${q.groupSize}: ${greedy}; ppl eqat ${r.pplEqat.toFixed(4)} vs llama.cpp ${r.pplLlama.toFixed(4)} ` +
        `(ratio ${(r.pplLlama / r.pplEqat).toFixed(5)}, 3 windows of 512)`,
    );
    assert.ok(Math.abs(r.pplLlama / r.pplEqat - 1) < 0.01, `w${q.bits}: ppl ${r.pplLlama} vs ${r.pplEqat}`);
  }
});

test('llama.cpp honours RoPE scaling (linear: metadata; llama3: rope_freqs)', { skip: SKIP_NLC }, async (t) => {
  const base = QUANT.find((q) => q.bits === 4)!;
  const scalings = {
    linear: { rope_type: 'linear', factor: 2 },
    llama3: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 64 },
  };
  const { windows } = evalWindows(readFileSync(EVAL_TEXT, 'utf8'), loadTokenizer(base.dir), 512);
  const baseSrc = WeightSource.open(base.dir);
  const unscaled = Math.exp(windowsNll(baseSrc, windows, 2, 512, { quiet: true }).nll);
  baseSrc.close();
  for (const [name, scaling] of Object.entries(scalings)) {
    const dir = join(WORK, `rope-${name}`);
    cpSync(base.dir, dir, { recursive: true });
    const cfg = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    writeFileSync(join(dir, 'config.json'), JSON.stringify({ ...cfg, rope_parameters: { rope_theta: 10000, ...scaling } }));
    const gguf = join(WORK, `rope-${name}.gguf`);
    const rep = await exportGguf(dir, gguf);
    assert.equal(parseGguf(gguf).tensors.has('rope_freqs.weight'), name === 'llama3');
    assert.equal(rep.exact, true);
    const r = await compareInference(dir, gguf, [], { greedy: 0, windows: 2, seqlen: 512 });
    t.diagnostic(`${name} RoPE scaling: ppl eqat ${r.pplEqat.toFixed(4)} vs llama.cpp ${r.pplLlama.toFixed(4)} (eqat unscaled ${unscaled.toFixed(4)})`);
    assert.ok(Math.abs(r.pplLlama / r.pplEqat - 1) < 0.01, `${name}: ppl ${r.pplLlama} vs ${r.pplEqat}`);
    assert.ok(r.pplEqat / unscaled > 1.05, 'the scaling changes the model enough for the check to see it');
  }
});

test('tied embeddings: no output tensor, llama.cpp reuses token_embd; mistral: context capped at the sliding window', { skip: SKIP_NLC }, async (t) => {
  const base = QUANT.find((q) => q.bits === 3)!;
  const tied = join(WORK, 'tied');
  cpSync(base.dir, tied, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(tied, 'config.json'), 'utf8')) as Record<string, unknown>;
  writeFileSync(join(tied, 'config.json'), JSON.stringify({ ...cfg, tie_word_embeddings: true }));
  const gguf = join(WORK, 'tied.gguf');
  const rep = await exportGguf(tied, gguf);
  assert.equal(rep.tensors, 38);
  assert.equal(parseGguf(gguf).tensors.has('output.weight'), false);
  const r = await compareInference(tied, gguf, [], { greedy: 0, windows: 1, seqlen: 512 });
  t.diagnostic(`tied embeddings: ppl eqat ${r.pplEqat.toFixed(4)} vs llama.cpp ${r.pplLlama.toFixed(4)}`);
  assert.ok(Math.abs(r.pplLlama / r.pplEqat - 1) < 0.01);

  const mistral = join(WORK, 'mistral');
  cpSync(base.dir, mistral, { recursive: true });
  writeFileSync(join(mistral, 'config.json'), JSON.stringify({ ...cfg, model_type: 'mistral', architectures: ['MistralForCausalLM'], sliding_window: 256 }));
  const mg = join(WORK, 'mistral.gguf');
  await exportGguf(mistral, mg);
  const g = parseGguf(mg);
  assert.equal(g.kv.get('general.architecture'), 'llama');
  assert.equal(g.kv.get('llama.context_length'), 256);
});

// ---------------------------------------------------------------------------------------------
// Tokenizers

/** Texts to tokenize: the golden cases, every paragraph of the evaluation sample, and (withWhole) all of it at once. */
function tokenizerTexts(withWhole: boolean): string[] {
  const text = readFileSync(EVAL_TEXT, 'utf8');
  return [...readGolden(TINY).tokenize.map((c) => c.text), ...text.split('\n\n'), ...(withWhole ? [text] : [])];
}

/** Exports `dir` and counts texts llama.cpp tokenizes differently from tokenizer.json. */
async function tokenizerMismatches(dir: string, texts: string[]): Promise<{ mismatches: number; first: string; tokens: number }> {
  const gguf = join(WORK, `${dir.split('/').pop()}.gguf`);
  await exportGguf(dir, gguf);
  return ggufMismatches(gguf, dir, texts);
}

/** Counts texts llama.cpp (vocabulary of `gguf`) tokenizes differently from `dir`'s tokenizer.json. */
async function ggufMismatches(gguf: string, dir: string, texts: string[]): Promise<{ mismatches: number; first: string; tokens: number }> {
  const hf = loadTokenizer(dir);
  const model = await (await llamaCpp()).loadModel({ modelPath: gguf, vocabOnly: true });
  try {
    let mismatches = 0;
    let first = '';
    let tokens = 0;
    for (const s of texts) {
      const want = hf.encode(s, { addSpecialTokens: false });
      const got = [...model.tokenize(s, true)];
      tokens += want.length;
      if (JSON.stringify(want) !== JSON.stringify(got)) {
        if (mismatches++ === 0) first = `${JSON.stringify(s.slice(0, 60))}: tokenizer.json ${want.slice(0, 12).join(',')} vs llama.cpp ${got.slice(0, 12).join(',')}`;
      }
    }
    return { mismatches, first, tokens };
  } finally {
    await model.dispose();
  }
}

function withTokenizer(name: string, tokenizerJson: unknown, tokenizerConfig?: unknown): string {
  const dir = join(WORK, name);
  cpSync(QUANT[0]!.dir, dir, { recursive: true });
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tokenizerJson));
  if (tokenizerConfig !== undefined) writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tokenizerConfig));
  return dir;
}

test('byte-level BPE: the fixture ("gpt-2") and a Llama-3 style variant ("llama-bpe") tokenize as tokenizer.json does', { skip: SKIP_NLC }, async (t) => {
  const texts = tokenizerTexts(true);
  const golden = readGolden(TINY);
  const fixture = await ggufMismatches(QUANT[0]!.gguf, QUANT[0]!.dir, texts); // exported above (an export never overwrites)
  assert.equal(fixture.mismatches, 0, fixture.first);
  const model = await (await llamaCpp()).loadModel({ modelPath: QUANT[0]!.gguf, vocabOnly: true });
  for (const c of golden.tokenize) assert.deepEqual([...model.tokenize(c.text, true)], c.ids_no_special, `golden ${JSON.stringify(c.text)}`);
  await model.dispose();

  const tj = JSON.parse(readFileSync(join(TINY, 'tokenizer.json'), 'utf8')) as Record<string, Record<string, unknown>>;
  const llama3 = {
    ...tj,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        {
          type: 'Split',
          pattern: { Regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+" },
          behavior: 'Isolated',
          invert: false,
        },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    model: { ...tj['model'], ignore_merges: true },
  };
  const dir = withTokenizer('tok-llama3', llama3);
  const r = await tokenizerMismatches(dir, texts);
  assert.equal(parseGguf(join(WORK, 'tok-llama3.gguf')).kv.get('tokenizer.ggml.pre'), 'llama-bpe');
  assert.equal(r.mismatches, 0, r.first);
  // the two pre-tokenizers really differ on this text, so each mapping is tested
  assert.notEqual(r.tokens, fixture.tokens);
  t.diagnostic(`gpt-2: ${texts.length} texts, ${fixture.tokens} tokens identical; llama-bpe: ${r.tokens} tokens identical`);
});

/** A small SentencePiece-style BPE tokenizer.json (Llama-2 layout) trained on `corpus`. */
function trainSentencePieceBpe(corpus: string, numMerges: number): Record<string, unknown> {
  const SP = '\u2581';
  const words = new Map<string, number>();
  for (const w of (SP + corpus.replace(/ /g, SP)).split(new RegExp(`(?=${SP})`))) words.set(w, (words.get(w) ?? 0) + 1);
  const charCount = new Map<string, number>();
  for (const [w, n] of words) for (const ch of w) charCount.set(ch, (charCount.get(ch) ?? 0) + n);
  // newlines and rare characters are left to byte fallback, as in Llama-2
  const alphabet = [...charCount].filter(([ch, n]) => n >= 3 && ch !== '\n').sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1)).map(([ch]) => ch);
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  for (const ch of alphabet) vocab[ch] = Object.keys(vocab).length;
  const known = new Set(alphabet);
  // each word as symbols; null marks a byte-fallback character no merge may touch
  const seqs = [...words].map(([w, n]) => ({ syms: [...w].map((ch) => (known.has(ch) ? ch : null)) as (string | null)[], n }));
  const merges: string[] = [];
  for (let m = 0; m < numMerges; m++) {
    const pairs = new Map<string, number>();
    for (const { syms, n } of seqs) {
      for (let i = 0; i + 1 < syms.length; i++) {
        if (syms[i] === null || syms[i + 1] === null) continue;
        const key = `${syms[i]}\u0000${syms[i + 1]}`;
        pairs.set(key, (pairs.get(key) ?? 0) + n);
      }
    }
    let best: string | null = null;
    let bestCount = 1;
    for (const [k, c] of pairs) if (c > bestCount || (c === bestCount && best !== null && k < best)) [best, bestCount] = [k, c];
    if (best === null) break;
    const [a, b] = best.split('\u0000') as [string, string];
    merges.push(`${a} ${b}`);
    if (vocab[a + b] === undefined) vocab[a + b] = Object.keys(vocab).length;
    for (const s of seqs) {
      const next: (string | null)[] = [];
      for (let i = 0; i < s.syms.length; i++) {
        if (i + 1 < s.syms.length && s.syms[i] === a && s.syms[i + 1] === b) {
          next.push(a + b);
          i++;
        } else next.push(s.syms[i]!);
      }
      s.syms = next;
    }
  }
  const special = (id: number, content: string): Record<string, unknown> => ({ id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true });
  return {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [special(0, '<unk>'), special(1, '<s>'), special(2, '</s>')],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: SP }, { type: 'Replace', pattern: { String: ' ' }, content: SP }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { SpecialToken: { id: '<s>', type_id: 1 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [{ type: 'Replace', pattern: { String: SP }, content: ' ' }, { type: 'ByteFallback' }, { type: 'Fuse' }, { type: 'Strip', content: ' ', start: 1, stop: 0 }],
    },
    model: { type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null, fuse_unk: true, byte_fallback: true, ignore_merges: false, vocab, merges },
  };
}

test('SentencePiece-style BPE (Llama-2 layout, byte fallback) tokenizes as tokenizer.json does', { skip: SKIP_NLC }, async (t) => {
  const spm = trainSentencePieceBpe(readFileSync(CALIB_TEXT, 'utf8').slice(0, 60000), 600);
  const tokCfg = { bos_token: '<s>', eos_token: '</s>', unk_token: '<unk>', tokenizer_class: 'LlamaTokenizerFast' };
  // paragraphs only: tokenizer.json's BPE without a pre-tokenizer is slow on one 80 kB string
  const texts = tokenizerTexts(false);
  const dir = withTokenizer('tok-spm', spm, tokCfg);
  const r = await tokenizerMismatches(dir, texts);
  const g = parseGguf(join(WORK, 'tok-spm.gguf'));
  assert.equal(g.kv.get('tokenizer.ggml.model'), 'llama');
  assert.equal(g.kv.get('tokenizer.ggml.add_space_prefix'), true);
  assert.equal(g.kv.get('tokenizer.ggml.bos_token_id'), 1);
  assert.equal((g.kv.get('tokenizer.ggml.token_type') as number[])[3 + 10], 6, '<0x0A> is a byte token');
  assert.equal(r.mismatches, 0, r.first);
  // the scores carry the merge order: with equal scores (as convert_hf_to_gguf.py's LlamaHfVocab
  // writes, −1000 for every token) llama.cpp merges in another order and the check fails
  const flatScores = Buffer.from(g.buf);
  const at = g.valueAt.get('tokenizer.ggml.scores')!;
  assert.equal(flatScores.readUInt32LE(at), 6, 'scores are an f32 array');
  const nScores = Number(flatScores.readBigUInt64LE(at + 4));
  for (let i = 0; i < nScores; i++) flatScores.writeFloatLE(-1000, at + 12 + 4 * i);
  const flatPath = join(WORK, 'tok-spm-flat-scores.gguf');
  writeFileSync(flatPath, flatScores);
  const rf = await ggufMismatches(flatPath, dir, texts.slice(0, 60));
  assert.ok(rf.mismatches > 0, 'equal scores must change the tokenization');
  const hf = loadTokenizer(dir);
  const byteFallbacks = texts.reduce((n, s) => n + hf.encode(s, { addSpecialTokens: false }).filter((id) => id >= 3 && id < 259).length, 0);
  assert.ok(byteFallbacks > 100, `byte fallback exercised (${byteFallbacks} byte tokens)`);
  // the newer Metaspace layout of the same tokenizer
  const meta = withTokenizer(
    'tok-spm-metaspace',
    { ...spm, normalizer: null, pre_tokenizer: { type: 'Metaspace', replacement: '\u2581', prepend_scheme: 'first', split: false } },
    tokCfg,
  );
  // Metaspace prepends "▁" only to text that does not already start with one, llama.cpp always
  // adds it: the two agree except on text that starts with a space (or follows a special token)
  const plainTexts = texts.filter((s) => !/^\s/.test(s));
  const rm = await tokenizerMismatches(meta, plainTexts);
  assert.equal(rm.mismatches, 0, rm.first);
  const leading = texts.filter((s) => / /.test(s[0] ?? ''));
  const rl = await ggufMismatches(join(WORK, 'tok-spm-metaspace.gguf'), meta, leading);
  t.diagnostic(`SentencePiece-style BPE (${(spm['model'] as { merges: unknown[] }).merges.length} merges): ${texts.length} texts, ${r.tokens} tokens identical (${byteFallbacks} byte-fallback tokens); Metaspace layout identical on the ${plainTexts.length} texts not starting with whitespace (${rl.mismatches}/${leading.length} starting with a space differ); with flat scores ${rf.mismatches}/60 texts differ`);
});

// ---------------------------------------------------------------------------------------------
// llama-small (optional)

/** ../shared/models/llama-small, or $EQAT_SHARED_DIR/models/llama-small (for a checkout without ../shared). */
function llamaSmallDir(): string | null {
  const env = process.env['EQAT_SHARED_DIR'];
  const fromEnv = env ? join(env, 'models', 'llama-small') : null;
  return sharedModel('llama-small') ?? (fromEnv && existsSync(join(fromEnv, 'golden.json')) ? fromEnv : null);
}

test('llama-small (../shared): 2-bit RTN export, llama.cpp vs eqat', { skip: SKIP_NLC || (llamaSmallDir() ? false : '../shared/models/llama-small not present') }, async (t) => {
  const small = llamaSmallDir()!;
  const dir = await quantizeRtn(small, 2, 64, 'small-w2g64');
  const gguf = join(WORK, 'small-w2g64.gguf');
  const rep = await exportGguf(dir, gguf);
  assert.equal(rep.exact, true, `exact export (types ${JSON.stringify(rep.types)})`);
  const golden = readGolden(small);
  const r = await compareInference(dir, gguf, golden.greedy.prompt_ids, { greedy: 8, windows: 2, seqlen: 512 });
  const greedy = assertGreedyAgrees(r.greedy, 'llama-small w2g64');
  t.diagnostic(
    `llama-small w2g64 (${JSON.stringify(rep.types)}, ${rep.bytes} bytes): ${greedy}; ppl eqat ${r.pplEqat.toFixed(4)} vs llama.cpp ${r.pplLlama.toFixed(4)} (ratio ${(r.pplLlama / r.pplEqat).toFixed(5)})`,
  );
  assert.ok(Math.abs(r.pplLlama / r.pplEqat - 1) < 0.01);
});
