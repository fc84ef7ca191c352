// ONNX export (src/export/onnx.ts) of the bundled llama-tiny quantized by Block-AP (RTN,
// --epochs 0) at 2-bit g32, 3-bit g64 and 4-bit g32, checked by running the exported graph:
// - onnxruntime-node: logits at the golden positions within 1e-2 of eqat's forward on the same
//   checkpoint; perplexity over 512-token windows of eval-sample.txt within 0.5% of eqat's;
//   a cached decoding step equals the full forward; left padding through attention_mask
//   leaves the real tokens' logits unchanged; external data gives the same logits;
// - transformers.js (@huggingface/transformers, local files only) loads the directory and
//   greedy-generates the tokens eqat's generateIds does, and its tokenizer matches eqat's;
// - the MatMulNBits packing dequantizes to eqat's weights exactly (odd shapes, a group size
//   that is not a power of two, 2/3/4/8 bits);
// - bad requests fail before anything is written.
// Every check that runs a graph skips when onnxruntime-node is not installed.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { exportOnnx, nbitsLayout, packMatMulNBits, type OnnxExportReport } from '../../src/export/onnx.js';
import { readModelSummary, ONNX_DTYPE } from '../../src/export/onnx-proto.js';
import { WeightSource } from '../../src/model/weights.js';
import { Model } from '../../src/model/model.js';
import type { Tensor } from '../../src/engine/tensor.js';
import { windowsNll } from '../../src/pipeline/eval.js';
import { generateIds } from '../../src/pipeline/generate.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { evalWindows } from '../../src/data/windows.js';
import { dequantize } from '../../src/quant/primitives.js';
import { Rng } from '../../src/engine/random.js';
import { SafetensorsModel } from '../../src/io/safetensors.js';
import { writeSafetensors, type TensorToWrite } from '../../src/io/safetensors-write.js';
import { fromF32 } from '../../src/engine/dtype.js';
import { readGolden, REPO, TINY, writeRtn } from '../golden.js';
import { argmax, loadOrt, meanNll as meanNllOf, runDecoder, type DecoderDims, type DecoderRunOptions, type OrtSession } from './runtimes.js';

const { ort, skip: SKIP } = await loadOrt();
type Tjs = typeof import('@huggingface/transformers');
let tjs: Tjs | null = null;
if (ort) {
  try {
    tjs = await import('@huggingface/transformers');
  } catch {
    tjs = null;
  }
}
const SKIP_TJS = tjs ? false : '@huggingface/transformers (or onnxruntime-node) is not installed';

process.env['EQAT_CACHE_DIR'] ??= mkdtempSync(join(tmpdir(), 'eqat-cache-'));
const golden = readGolden(TINY);
const EVAL = join(REPO, 'fixtures', 'text', 'eval-sample.txt');

interface Variant {
  bits: number;
  group: number;
  ckpt: string;
  report: OnnxExportReport;
  /** null when onnxruntime-node is not installed */
  session: import('onnxruntime-node').InferenceSession | null;
  eqat: Model<Tensor>;
}
const VARIANTS: [number, number][] = [
  [2, 32],
  [3, 64],
  [4, 32],
];
const variants: Variant[] = [];
let work = '';

before(async () => {
  work = mkdtempSync(join(tmpdir(), 'eqat-onnx-'));
  for (const [bits, group] of VARIANTS) {
    const ckpt = join(work, `w${bits}g${group}`);
    await writeRtn(TINY, ckpt, bits, group);
    const report = await exportOnnx(ckpt, join(work, `onnx-w${bits}g${group}`));
    const session = ort ? await ort.InferenceSession.create(report.onnxPath) : null;
    const src = WeightSource.open(ckpt);
    const eqat = Model.load(src);
    src.close();
    variants.push({ bits, group, ckpt, report, session, eqat });
  }
});

after(() => {
  if (work) rmSync(work, { recursive: true, force: true });
});

const NUM_LAYERS = 4;
const HKV = 2;
const HEAD_DIM = 32;
const VOCAB = 4096;

/**
 * A variant of llama-tiny with the features the tiny checkpoint lacks, weights in `dtype`:
 * 'qwen3' has q/k RMSNorm, q/k/v/o biases, tied embeddings and a 16-token sliding window on
 * every layer; 'llama-bias' has attention and MLP biases and llama3 RoPE scaling.
 */
function synthesize(dir: string, family: 'qwen3' | 'llama-bias', dtype: 'F32' | 'BF16'): void {
  const st = SafetensorsModel.open(TINY);
  const rng = new Rng(family === 'qwen3' ? 3 : 4);
  const tensors: TensorToWrite[] = [];
  const add = (name: string, shape: number[], f32: Float32Array) =>
    tensors.push({ name, dtype, shape, data: dtype === 'F32' ? f32 : fromF32('bf16', f32) });
  for (const name of st.names()) {
    if (family === 'qwen3' && name === 'lm_head.weight') continue;
    add(name, st.info(name).shape, st.readF32(name));
  }
  st.close();
  const rand = (n: number, scale: number, offset = 0) => Float32Array.from({ length: n }, () => offset + scale * (2 * rng.next() - 1));
  const C = 128;
  for (let i = 0; i < NUM_LAYERS; i++) {
    const p = `model.layers.${i}`;
    for (const [m, n] of [['q_proj', 128], ['k_proj', 64], ['v_proj', 64], ['o_proj', C]] as const) add(`${p}.self_attn.${m}.bias`, [n], rand(n, 0.2));
    if (family === 'qwen3') {
      add(`${p}.self_attn.q_norm.weight`, [HEAD_DIM], rand(HEAD_DIM, 0.3, 1));
      add(`${p}.self_attn.k_norm.weight`, [HEAD_DIM], rand(HEAD_DIM, 0.3, 1));
    } else {
      for (const [m, n] of [['gate_proj', 384], ['up_proj', 384], ['down_proj', C]] as const) add(`${p}.mlp.${m}.bias`, [n], rand(n, 0.2));
    }
  }
  mkdirSync(dir, { recursive: true });
  writeSafetensors(join(dir, 'model.safetensors'), tensors);
  const cfg = JSON.parse(readFileSync(join(TINY, 'config.json'), 'utf8')) as Record<string, unknown>;
  cfg['dtype'] = dtype === 'F32' ? 'float32' : 'bfloat16';
  if (family === 'qwen3') {
    Object.assign(cfg, { model_type: 'qwen3', architectures: ['Qwen3ForCausalLM'], attention_bias: true, tie_word_embeddings: true });
    Object.assign(cfg, { use_sliding_window: true, sliding_window: 16, max_window_layers: 0 });
  } else {
    Object.assign(cfg, { attention_bias: true, mlp_bias: true });
    cfg['rope_parameters'] = { rope_type: 'llama3', rope_theta: 10000.0, factor: 8.0, low_freq_factor: 1.0, high_freq_factor: 4.0, original_max_position_embeddings: 32 };
  }
  writeFileSync(join(dir, 'config.json'), JSON.stringify(cfg, null, 2));
  for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json']) cpSync(join(TINY, f), join(dir, f));
}

const TINY_DIMS: DecoderDims = { layers: NUM_LAYERS, kvHeads: HKV, headDim: HEAD_DIM, vocab: VOCAB };

/** Runs the exported llama-tiny decoder on rows of ids (B, S) after `past` cached entries. */
function runOrt(session: OrtSession | null, ids: number[][], opts: DecoderRunOptions = {}): ReturnType<typeof runDecoder> {
  return runDecoder(ort!, session!, TINY_DIMS, ids, opts);
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/** Mean next-token NLL (nats) of logits (W, T, V) for the token rows (W, T), in float64. */
function meanNll(logits: Float32Array, rows: number[][]): number {
  return meanNllOf(logits, rows, VOCAB);
}

test('graph: MatMulNBits linears, Optimum/transformers.js input and output names', () => {
  for (const v of variants) {
    const s = readModelSummary(readFileSync(v.report.onnxPath));
    assert.deepEqual(
      s.opsets.map((o) => `${o.domain}:${o.version}`).sort(),
      [':17', 'com.microsoft:1'],
    );
    const nbits = s.nodes.filter((n) => n.opType === 'MatMulNBits');
    assert.equal(nbits.length, 7 * NUM_LAYERS);
    const storage = v.bits === 2 ? 2 : 4;
    for (const n of nbits) {
      assert.equal(n.domain, 'com.microsoft');
      assert.equal(n.ints['bits'], storage);
      assert.equal(n.ints['block_size'], v.group);
      const B = s.initializers.find((t) => t.name === n.inputs[1])!;
      assert.deepEqual(B.dims, [n.ints['N'], n.ints['K']! / v.group, (v.group * storage) / 8]);
      assert.equal(B.dtype, ONNX_DTYPE.UINT8);
    }
    // the only float MatMuls are the two attention products per layer; lm_head is one Gemm
    assert.equal(s.nodes.filter((n) => n.opType === 'MatMul').length, 2 * NUM_LAYERS);
    assert.equal(s.nodes.filter((n) => n.opType === 'Gemm').length, 1);
    assert.equal(v.report.nodes, s.nodes.length);
    assert.equal(v.report.bits, storage);
    assert.equal(basename(v.report.onnxPath), v.bits === 2 ? 'model_q2.onnx' : 'model_q4.onnx');
    const names = [
      'input_ids',
      'attention_mask',
      'position_ids',
      ...Array.from({ length: NUM_LAYERS }, (_, i) => [`past_key_values.${i}.key`, `past_key_values.${i}.value`]).flat(),
    ];
    assert.deepEqual(s.inputs.map((x) => x.name), names);
    assert.deepEqual(s.inputs[3]!.shape, ['batch_size', HKV, 'past_sequence_length', HEAD_DIM]);
    assert.deepEqual(s.outputs.map((x) => x.name), ['logits', ...names.slice(3).map((n) => n.replace('past_key_values', 'present'))]);
    assert.deepEqual(s.outputs[0]!.shape, ['batch_size', 'sequence_length', VOCAB]);
    const config = JSON.parse(readFileSync(join(v.report.dir, 'config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(config['quantization_config'], undefined);
    assert.deepEqual(config['transformers.js_config'], { dtype: v.bits === 2 ? 'q2' : 'q4' });
    for (const f of ['tokenizer.json', 'tokenizer_config.json', 'generation_config.json', 'genai_config.json']) {
      assert.ok(existsSync(join(v.report.dir, f)), f);
    }
  }
});

test('onnxruntime: logits at the golden positions within 1e-2 of eqat on the same checkpoint', { skip: SKIP }, async (t) => {
  const ids = golden.forward.input_ids;
  const T = ids.length;
  for (const v of variants) {
    const { logits } = await runOrt(v.session, [ids]);
    const want = v.eqat.forward(Int32Array.from(ids), 1, T).f32;
    let err = 0;
    for (const pos of golden.forward.positions) {
      err = Math.max(err, maxAbsDiff(logits.subarray(pos * VOCAB, (pos + 1) * VOCAB), want.subarray(pos * VOCAB, (pos + 1) * VOCAB)));
    }
    t.diagnostic(`w${v.bits}g${v.group}: max |logit diff| at positions ${golden.forward.positions.join('/')} = ${err.toExponential(2)}`);
    assert.ok(err <= 1e-2, `w${v.bits}g${v.group}: max |logit diff| ${err} > 1e-2`);
  }
});

test('onnxruntime: perplexity over 512-token windows within 0.5% of eqat', { skip: SKIP }, async (t) => {
  const T = 512;
  const COUNT = 3;
  const tok = loadTokenizer(TINY);
  const { windows, count } = evalWindows(readFileSync(EVAL, 'utf8'), tok, T);
  assert.ok(count >= COUNT, `eval-sample.txt has ${count} windows of ${T}`);
  const rows = Array.from({ length: COUNT }, (_, w) => Array.from(windows.subarray(w * T, (w + 1) * T)));
  for (const v of variants) {
    const src = WeightSource.open(v.ckpt);
    const { nll: eqatNll } = windowsNll(src, windows, COUNT, T, { quiet: true });
    src.close();
    const { logits } = await runOrt(v.session, rows);
    const onnxPpl = Math.exp(meanNll(logits, rows));
    const eqatPpl = Math.exp(eqatNll);
    const rel = Math.abs(onnxPpl - eqatPpl) / eqatPpl;
    t.diagnostic(`w${v.bits}g${v.group}: ppl onnx ${onnxPpl.toFixed(4)} eqat ${eqatPpl.toFixed(4)} (rel diff ${rel.toExponential(2)})`);
    assert.ok(rel <= 0.005, `w${v.bits}g${v.group}: ppl ${onnxPpl} vs eqat ${eqatPpl}`);
  }
});

test('onnxruntime: a decoding step with past key/values equals the full forward', { skip: SKIP }, async (t) => {
  const ids = golden.forward.input_ids.slice(0, 40);
  const S0 = 37;
  for (const v of variants) {
    const full = await runOrt(v.session, [ids]);
    // prefix, then one token, then the last two at once
    const pre = await runOrt(v.session, [ids.slice(0, S0)]);
    assert.deepEqual(pre.present['past_key_values.0.key']!.dims, [1, HKV, S0, HEAD_DIM]);
    const step = await runOrt(v.session, [[ids[S0]!]], { past: pre.present });
    const two = await runOrt(v.session, [ids.slice(S0 + 1)], { past: step.present });
    const at = (l: Float32Array, p: number) => l.subarray(p * VOCAB, (p + 1) * VOCAB);
    const e1 = maxAbsDiff(at(step.logits, 0), at(full.logits, S0));
    const e2 = Math.max(maxAbsDiff(at(two.logits, 0), at(full.logits, S0 + 1)), maxAbsDiff(at(two.logits, 1), at(full.logits, S0 + 2)));
    t.diagnostic(`w${v.bits}g${v.group}: cached step vs full forward max |diff| ${e1.toExponential(2)}, two-token step ${e2.toExponential(2)}`);
    assert.ok(e1 <= 1e-4 && e2 <= 1e-4, `w${v.bits}g${v.group}: cached logits differ by ${e1} / ${e2}`);
    assert.equal(argmax(at(step.logits, 0)), argmax(at(full.logits, S0)));
  }
});

test('onnxruntime: q/k norm, biases, tied embeddings, sliding window, llama3 RoPE, f32/bf16 weights', { skip: SKIP }, async (t) => {
  const ids = golden.forward.input_ids; // 64 tokens: the 16-token window matters
  for (const [family, dtype] of [['qwen3', 'BF16'], ['llama-bias', 'F32']] as const) {
    const fp = join(work, `${family}-fp`);
    synthesize(fp, family, dtype);
    const ckpt = join(work, `${family}-w4g32`);
    await writeRtn(fp, ckpt, 4, 32);
    const r = await exportOnnx(ckpt, join(work, `${family}-onnx`));
    const session = await ort!.InferenceSession.create(r.onnxPath);
    const src = WeightSource.open(ckpt);
    const eqat = Model.load(src);
    src.close();
    const { logits } = await runOrt(session, [ids]);
    const want = eqat.forward(Int32Array.from(ids), 1, ids.length).f32;
    const err = maxAbsDiff(logits, want);
    // a cached step at position 63 (its window reaches back into the cache)
    const pre = await runOrt(session, [ids.slice(0, 63)]);
    const step = await runOrt(session, [[ids[63]!]], { past: pre.present });
    const stepErr = maxAbsDiff(step.logits, want.subarray(63 * VOCAB, 64 * VOCAB));
    t.diagnostic(`${family} (${dtype}): max |logit diff| over all 64 positions ${err.toExponential(2)}, cached step ${stepErr.toExponential(2)}`);
    assert.ok(err <= 1e-2 && stepErr <= 1e-2, `${family}: logits differ by ${err} / ${stepErr}`);
  }
});

test('onnxruntime: left padding masked by attention_mask leaves the real tokens unchanged', { skip: SKIP }, async () => {
  const v = variants.find((x) => x.bits === 4)!;
  const a = golden.forward.input_ids.slice(0, 12);
  const b = golden.forward.input_ids.slice(20, 29); // 9 tokens, padded with 3 on the left
  const pad = 3;
  const alone = await runOrt(v.session, [b]);
  const batch = await runOrt(v.session, [a, [1, 1, 1, ...b]], {
    mask: [new Array(12).fill(1), [0, 0, 0, ...new Array(9).fill(1)]],
    positions: [Array.from({ length: 12 }, (_, t) => t), [1, 1, 1, ...Array.from({ length: 9 }, (_, t) => t)]],
  });
  const rowB = batch.logits.subarray((12 + pad) * VOCAB, 24 * VOCAB);
  assert.ok(maxAbsDiff(rowB, alone.logits) <= 1e-4);
  const first = await runOrt(v.session, [a]);
  assert.ok(maxAbsDiff(batch.logits.subarray(0, 12 * VOCAB), first.logits) <= 1e-4);
});

test('onnxruntime: external data export gives identical logits', { skip: SKIP }, async () => {
  const v = variants.find((x) => x.bits === 4)!;
  const out = join(work, 'onnx-external');
  const r = await exportOnnx(v.ckpt, out, { externalData: true });
  assert.ok(r.externalDataPath && existsSync(r.externalDataPath));
  const s = readModelSummary(readFileSync(r.onnxPath));
  const B = s.initializers.find((x) => x.name.endsWith('q_proj.MatMulNBits.B'))!;
  assert.equal(B.external?.['location'], 'model_q4.onnx_data');
  assert.equal(Number(B.external?.['offset']) % 4096, 0);
  const config = JSON.parse(readFileSync(join(out, 'config.json'), 'utf8')) as Record<string, unknown>;
  assert.deepEqual(config['transformers.js_config'], { dtype: 'q4', use_external_data_format: { 'model_q4.onnx': 1 } });
  const session = await ort!.InferenceSession.create(r.onnxPath);
  const ids = golden.forward.input_ids.slice(0, 16);
  const a = await runOrt(v.session, [ids]);
  const b = await runOrt(session, [ids]);
  assert.deepEqual(b.logits, a.logits);
});

test('onnxruntime: accuracy_level 4 (int8 activations) stays within 0.5% perplexity of eqat', { skip: SKIP }, async (t) => {
  const v = variants.find((x) => x.bits === 4)!;
  const r = await exportOnnx(v.ckpt, join(work, 'onnx-acc4'), { accuracyLevel: 4 });
  const s = readModelSummary(readFileSync(r.onnxPath));
  assert.ok(s.nodes.filter((n) => n.opType === 'MatMulNBits').every((n) => n.ints['accuracy_level'] === 4));
  const session = await ort!.InferenceSession.create(r.onnxPath);
  const T = 512;
  const { windows } = evalWindows(readFileSync(EVAL, 'utf8'), loadTokenizer(TINY), T);
  const rows = [Array.from(windows.subarray(0, T)), Array.from(windows.subarray(T, 2 * T))];
  const src = WeightSource.open(v.ckpt);
  const eqatPpl = Math.exp(windowsNll(src, windows, 2, T, { quiet: true }).nll);
  src.close();
  const ppl = Math.exp(meanNll((await runOrt(session, rows)).logits, rows));
  t.diagnostic(`w4g32 accuracy_level 4: ppl ${ppl.toFixed(4)} vs eqat ${eqatPpl.toFixed(4)}`);
  assert.ok(Math.abs(ppl - eqatPpl) / eqatPpl <= 0.005);
});

test('transformers.js loads the export and greedy-generates eqat\'s tokens', { skip: SKIP_TJS }, async (t) => {
  const tf = tjs!;
  tf.env.allowRemoteModels = false;
  tf.env.allowLocalModels = true;
  tf.env.useFSCache = false;
  const prompt = golden.greedy.prompt_ids;
  const n = golden.greedy.output_ids.length - prompt.length;
  for (const v of variants) {
    tf.env.localModelPath = dirname(v.report.dir);
    const id = basename(v.report.dir);
    const model = await tf.AutoModelForCausalLM.from_pretrained(id, { local_files_only: true, device: 'cpu' });
    const input = new tf.Tensor('int64', BigInt64Array.from(prompt.map((x) => BigInt(x))), [1, prompt.length]);
    const out = (await model.generate({ inputs: input, max_new_tokens: n, do_sample: false })) as import('@huggingface/transformers').Tensor;
    const got = Array.from(out.data as BigInt64Array, (x) => Number(x));
    // transformers.js stops at the end-of-sequence token, as generateIds does with stopAtEos
    const want = generateIds(v.eqat, prompt, { maxNewTokens: n, stopAtEos: true });
    t.diagnostic(`w${v.bits}g${v.group}: transformers.js ${got.slice(prompt.length).join(' ')}`);
    assert.deepEqual(got, want, `w${v.bits}g${v.group}`);
    await model.dispose();
  }
  // external data: transformers.js finds model_q4.onnx_data through transformers.js_config
  const v4 = variants.find((x) => x.bits === 4)!;
  const ext = await exportOnnx(v4.ckpt, join(work, 'tjs-external'), { externalData: true });
  const model = await tf.AutoModelForCausalLM.from_pretrained(basename(ext.dir), { local_files_only: true, device: 'cpu' });
  const input = new tf.Tensor('int64', BigInt64Array.from(prompt.map((x) => BigInt(x))), [1, prompt.length]);
  const out = (await model.generate({ inputs: input, max_new_tokens: n, do_sample: false })) as import('@huggingface/transformers').Tensor;
  assert.deepEqual(Array.from(out.data as BigInt64Array, (x) => Number(x)), generateIds(v4.eqat, prompt, { maxNewTokens: n, stopAtEos: true }));
  await model.dispose();
  // the copied tokenizer files load in transformers.js and encode as eqat's tokenizer does
  const tokenizer = await tf.AutoTokenizer.from_pretrained(basename(variants[0]!.report.dir), { local_files_only: true });
  const eqatTok = loadTokenizer(variants[0]!.ckpt);
  for (const s of golden.tokenize) {
    assert.deepEqual(Array.from(tokenizer.encode(s.text)), eqatTok.encode(s.text), JSON.stringify(s.text));
  }
});

test('MatMulNBits packing dequantizes to eqat weights exactly (odd shapes, 2/3/4/8 bits)', () => {
  const rng = new Rng(7);
  for (const [bits, O, I, G] of [
    [2, 3, 96, 48],
    [3, 5, 64, 64],
    [4, 7, 96, 32],
    [4, 1, 48, 48],
    [8, 3, 32, 16],
  ] as [number, number, number, number][]) {
    const layout = nbitsLayout(bits, G);
    const qm = 2 ** bits - 1;
    const groups = I / G;
    const q = Uint8Array.from({ length: O * I }, () => rng.int(0, qm + 1));
    const scale = Float32Array.from({ length: O * groups }, () => 0.001 + rng.next() * 0.1);
    const zero = Float32Array.from({ length: O * groups }, () => rng.int(0, qm + 1));
    const p = packMatMulNBits(q, scale, zero, O, I, G, bits, layout);
    // independent reading of the contrib-op layout: codes low bits first within each byte
    const sb = layout.bits;
    const perByte = 8 / sb;
    const mask = (1 << sb) - 1;
    const got = new Float32Array(O * I);
    for (let n = 0; n < O; n++) {
      for (let k = 0; k < I; k++) {
        const blk = Math.floor(k / layout.blockSize);
        const within = k % layout.blockSize;
        const byte = p.B[(n * p.kBlocks + blk) * p.blob + Math.floor(within / perByte)]!;
        const code = (byte >> ((within % perByte) * sb)) & mask;
        const zbyte = p.zeroPoints[n * p.zpCols + Math.floor(blk / perByte)]!;
        const z = (zbyte >> ((blk % perByte) * sb)) & mask;
        got[n * I + k] = Math.fround((code - z) * p.scales[n * p.kBlocks + blk]!);
      }
    }
    assert.deepEqual(got, dequantize(q, scale, zero, O, I, bits, G), `bits ${bits} O ${O} I ${I} G ${G}`);
    assert.equal(layout.blockSize, G === 48 ? 16 : G);
  }
  assert.throws(() => nbitsLayout(4, 24), /group size 24 cannot be expressed as MatMulNBits blocks/);
  assert.throws(() => nbitsLayout(5, 32), /5-bit checkpoints are not supported/);
});

test('bad requests fail before anything is written', async () => {
  const v = variants.find((x) => x.bits === 4)!;
  const out = join(work, 'refused');
  // a full-precision checkpoint
  await assert.rejects(exportOnnx(TINY, out), /full-precision checkpoint/);
  assert.ok(!existsSync(out) && !existsSync(out + '.partial'));
  // an unsupported architecture
  const gemma = join(work, 'gemma');
  cpSync(v.ckpt, gemma, { recursive: true });
  const cfgPath = join(gemma, 'config.json');
  const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>;
  writeFileSync(cfgPath, JSON.stringify({ ...cfg, model_type: 'gemma' }));
  await assert.rejects(exportOnnx(gemma, out), /model_type 'gemma' is not supported/);
  assert.ok(!existsSync(out));
  // a group size MatMulNBits cannot express
  const g24 = join(work, 'g24');
  cpSync(v.ckpt, g24, { recursive: true });
  const qc = cfg['quantization_config'] as Record<string, unknown>;
  writeFileSync(join(g24, 'config.json'), JSON.stringify({ ...cfg, quantization_config: { ...qc, group_size: 8 } }));
  await assert.rejects(exportOnnx(g24, out), /group size 8 cannot be expressed as MatMulNBits blocks/);
  assert.ok(!existsSync(out));
  // a missing tensor
  const broken = join(work, 'broken');
  cpSync(v.ckpt, broken, { recursive: true });
  const idxPath = join(broken, 'model.safetensors.index.json');
  const idx = JSON.parse(readFileSync(idxPath, 'utf8')) as { weight_map: Record<string, string> };
  delete idx.weight_map['model.layers.2.mlp.up_proj.qzeros'];
  writeFileSync(idxPath, JSON.stringify(idx));
  await assert.rejects(exportOnnx(broken, out), /missing tensor model\.layers\.2\.mlp\.up_proj\.qzeros/);
  assert.ok(!existsSync(out));
  // an accuracy level MatMulNBits exports do not offer
  await assert.rejects(exportOnnx(v.ckpt, out, { accuracyLevel: 2 as 0 }), /accuracyLevel must be 0 or 4, got 2/);
  assert.ok(!existsSync(out));
  // an output directory that is not empty
  mkdirSync(out);
  writeFileSync(join(out, 'keep.txt'), 'x');
  await assert.rejects(exportOnnx(v.ckpt, out), /is not empty; refusing to overwrite/);
  assert.deepEqual(readFileSync(join(out, 'keep.txt'), 'utf8'), 'x');
});
