// Inputs are checked before the expensive part: every tensor a run reads (present, shaped as
// config.json says, a dtype eqat reads) before block 0 trains, on full-precision and quantized
// checkpoints alike; NaN/Inf weights refused at load naming the tensor; a non-finite training
// loss naming the first non-finite value; calibration and training text that is not text;
// sequence lengths beyond the model's positions; input paths that are missing, of the wrong
// kind or unreadable, named with their flag.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { blockApDefaults, runBlockAp, type BlockApOptions } from '../../src/pipeline/block-ap.js';
import { e2eQpDefaults, runE2eQp, type E2eQpOptions } from '../../src/pipeline/e2e-qp.js';
import { evaluatePerplexity } from '../../src/pipeline/eval.js';
import { generateFromSource } from '../../src/pipeline/generate.js';
import { resolveRecipe } from '../../src/pipeline/quantize.js';
import { exportGguf } from '../../src/export/gguf.js';
import { exportOnnx } from '../../src/export/onnx.js';
import { WeightSource } from '../../src/model/weights.js';
import { checkPositions, type ModelConfig } from '../../src/model/config.js';
import { SafetensorsModel } from '../../src/io/safetensors.js';
import { checkText, readDocuments, NON_TEXT_REFUSE, NON_TEXT_WARN } from '../../src/data/documents.js';
import { readInstructRecords } from '../../src/data/instruct.js';
import { REPO, TINY, rtnTiny } from '../golden.js';
import { tinyConfig } from '../model/tiny-config.js';

process.env['EQAT_CACHE_DIR'] = mkdtempSync(join(tmpdir(), 'eqat-cache-'));

const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const CLI = join(REPO, 'dist', 'src', 'cli', 'main.js');
const work = mkdtempSync(join(tmpdir(), 'eqat-inputs-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

function dir(name: string): string {
  const d = join(work, name);
  mkdirSync(d, { recursive: true });
  return d;
}

interface RawTensor {
  name: string;
  dtype: string;
  shape: number[];
  bytes: Uint8Array;
}

/** Every tensor of a checkpoint as raw bytes (any dtype), for tests that damage one. */
function readRaw(model: string): RawTensor[] {
  const st = SafetensorsModel.open(model);
  try {
    return st.names().map((name) => {
      const i = st.info(name);
      return { name, dtype: i.dtype, shape: i.shape, bytes: st.readRaw(name) };
    });
  } finally {
    st.close();
  }
}

/** Writes a single-file safetensors checkpoint of any dtypes (the library writer takes five). */
function writeRaw(path: string, tensors: RawTensor[]): void {
  const header: Record<string, unknown> = {};
  let at = 0;
  for (const t of tensors) {
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [at, at + t.bytes.length] };
    at += t.bytes.length;
  }
  let json = JSON.stringify(header);
  json += ' '.repeat((8 - (json.length % 8)) % 8);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  writeFileSync(path, Buffer.concat([len, Buffer.from(json), ...tensors.map((t) => Buffer.from(t.bytes))]));
}

/** A copy of the model dir `from` named `name` whose single safetensors file holds `edit`(its tensors). */
function damaged(from: string, name: string, edit: (ts: RawTensor[]) => RawTensor[]): string {
  const d = join(work, name);
  cpSync(from, d, { recursive: true });
  for (const f of readdirSync(d)) if (f.endsWith('.safetensors') || f.endsWith('.index.json')) rmSync(join(d, f));
  writeRaw(join(d, 'model.safetensors'), edit(readRaw(from)));
  return d;
}

const LAST = 'model.layers.3.mlp.down_proj.weight'; // llama-tiny has 4 blocks

function bapOpts(model: string, out: string, over: Partial<BlockApOptions> = {}): BlockApOptions {
  return {
    ...blockApDefaults(2),
    model,
    calib: CALIB,
    out,
    wbits: 2,
    groupSize: 32,
    trainSize: 8,
    valSize: 0,
    seqlen: 64,
    batchSize: 2,
    epochs: 1,
    quiet: true,
    ...over,
  };
}

/** Runs Block-AP expecting a refusal matching `re` before any training step, with nothing written. */
async function refusedBeforeTraining(opts: BlockApOptions, re: RegExp): Promise<void> {
  let steps = 0;
  await assert.rejects(runBlockAp({ ...opts, onStep: () => steps++ }), re);
  assert.equal(steps, 0, 'no training step ran');
  assert.ok(!existsSync(opts.out) && !existsSync(opts.out + '.partial'), 'nothing written');
}

test('a broken full-precision checkpoint is refused before block 0 trains, naming the file and the tensor', async () => {
  const out = join(dir('bap-broken'), 'out');
  const missing = damaged(TINY, 'missing', (ts) => ts.filter((t) => t.name !== LAST));
  await refusedBeforeTraining(bapOpts(missing, out), new RegExp(`${missing}: missing tensor ${LAST.replace(/\./g, '\\.')} \\(block 4 of 4\\)`));
  const shape = damaged(TINY, 'shape', (ts) =>
    ts.map((t) => (t.name === LAST ? { ...t, shape: [384, 128], bytes: t.bytes } : t)),
  );
  await refusedBeforeTraining(
    bapOpts(shape, out),
    /shape\/model\.safetensors: tensor model\.layers\.3\.mlp\.down_proj\.weight has shape \[384, 128\], but .*config\.json implies \[128, 384\]/,
  );
  // F8_E4M3: one byte per value, so the F16 tensor's first half stands in for its bytes
  const f8 = damaged(TINY, 'f8', (ts) => ts.map((t) => (t.name === LAST ? { ...t, dtype: 'F8_E4M3', bytes: t.bytes.subarray(0, t.bytes.length / 2) } : t)));
  await refusedBeforeTraining(bapOpts(f8, out), /f8\/model\.safetensors: tensor model\.layers\.3\.mlp\.down_proj\.weight has dtype F8_E4M3, which eqat does not read here \(expected F32, F16, BF16\)/);
  // RTN reads the same tensors
  await refusedBeforeTraining(bapOpts(f8, out, { epochs: 0, calib: null }), /dtype F8_E4M3/);
  // the model's other readers refuse it before any work too
  await assert.rejects(evaluatePerplexity(missing, CALIB, { seqlen: 64, quiet: true }), /missing tensor model\.layers\.3\.mlp\.down_proj\.weight/);
  const src = WeightSource.open(shape);
  try {
    assert.throws(() => generateFromSource(src, [0, 5], { maxNewTokens: 2 }), /tensor model\.layers\.3\.mlp\.down_proj\.weight has shape \[384, 128\]/);
  } finally {
    src.close();
  }
});

test('a broken quantized checkpoint is refused by e2e-qp, eval, generate and both exports before any work', async () => {
  const rtn = await rtnTiny(2, 32);
  const qz = 'model.layers.3.mlp.down_proj.qzeros';
  const missing = join(work, 'q-missing');
  cpSync(rtn, missing, { recursive: true });
  const idxPath = join(missing, 'model.safetensors.index.json');
  const idx = JSON.parse(readFileSync(idxPath, 'utf8')) as { weight_map: Record<string, string> };
  delete idx.weight_map[qz];
  writeFileSync(idxPath, JSON.stringify(idx));
  const re = /missing tensor model\.layers\.3\.mlp\.down_proj\.qzeros \(block 4 of 4\)/;
  const out = join(dir('q-out'), 'out');
  const e2e: E2eQpOptions = { ...e2eQpDefaults(2), model: missing, data: CALIB, out, trainSize: 4, seqlen: 32, batchSize: 2, microBatchSize: 2, quiet: true };
  let steps = 0;
  await assert.rejects(runE2eQp({ ...e2e, onStep: () => steps++ }), re);
  assert.equal(steps, 0);
  assert.ok(!existsSync(out) && !existsSync(out + '.partial'));
  await assert.rejects(evaluatePerplexity(missing, CALIB, { seqlen: 64, quiet: true }), re);
  await assert.rejects(exportGguf(missing, join(work, 'x.gguf')), re);
  await assert.rejects(exportOnnx(missing, join(work, 'x-onnx')), re);
  assert.ok(!existsSync(join(work, 'x.gguf')) && !existsSync(join(work, 'x-onnx')));
  // step sizes of the wrong shape (a checkpoint whose group size is not the config's)
  const scales = damaged(rtn, 'q-scales', (ts) => ts.map((t) => (t.name === 'model.layers.3.mlp.down_proj.scales' ? { ...t, shape: [t.shape[1]!, t.shape[0]!] } : t)));
  await assert.rejects(runE2eQp({ ...e2e, model: scales }), /tensor model\.layers\.3\.mlp\.down_proj\.scales has shape \[128, 12\], but .*implies \[12, 128\]/);
  const src = WeightSource.open(scales);
  try {
    assert.throws(() => generateFromSource(src, [0, 5], { maxNewTokens: 2 }), /down_proj\.scales has shape/);
  } finally {
    src.close();
  }
});

/** The F16 bits of NaN and +Inf. */
const F16_NAN = 0x7e00;
const F16_INF = 0x7c00;

function withF16At(name: string, index: number, bits: number): (ts: RawTensor[]) => RawTensor[] {
  return (ts) =>
    ts.map((t) => {
      if (t.name !== name) return t;
      const bytes = new Uint8Array(t.bytes);
      if (t.dtype === 'F32') new Float32Array(bytes.buffer)[index] = bits === F16_NAN ? NaN : Infinity;
      else new Uint16Array(bytes.buffer)[index] = bits;
      return { ...t, bytes };
    });
}

test('NaN/Inf weights are refused at load, naming the tensor: eval exits non-zero and RTN writes nothing', async () => {
  const nan = damaged(TINY, 'nan', withF16At('model.layers.2.self_attn.v_proj.weight', 7, F16_NAN));
  const cli = spawnSync(process.execPath, [CLI, 'eval', '--model', nan, '--data', CALIB, '--seqlen', '64', '--max-windows', '1'], { encoding: 'utf8' });
  assert.equal(cli.status, 1, cli.stderr);
  assert.match(cli.stderr, /nan\/model\.safetensors: tensor model\.layers\.2\.self_attn\.v_proj\.weight holds NaN at element 7/);
  assert.doesNotMatch(cli.stdout, /ppl/);
  // generate: exit 1 naming the tensor, no text generated
  const gen = spawnSync(process.execPath, [CLI, 'generate', '--model', nan, '--prompt', 'hello', '--max-new-tokens', '2'], { encoding: 'utf8' });
  assert.equal(gen.status, 1, gen.stderr);
  assert.match(gen.stderr, /^eqat: .*nan\/model\.safetensors: tensor model\.layers\.2\.self_attn\.v_proj\.weight holds NaN at element 7/);
  assert.equal(gen.stdout, '');
  const out = join(dir('nan-out'), 'rtn');
  await refusedBeforeTraining(bapOpts(nan, out), /v_proj\.weight holds NaN at element 7/);
  await refusedBeforeTraining(bapOpts(nan, out, { epochs: 0, calib: null }), /v_proj\.weight holds NaN at element 7/);
  // the head is copied unchanged by RTN: an infinity there is refused before any block is written
  const inf = damaged(TINY, 'inf', withF16At('lm_head.weight', 3, F16_INF));
  await refusedBeforeTraining(bapOpts(inf, out), /inf\/model\.safetensors: tensor lm_head\.weight holds Infinity at element 3/);
  await assert.rejects(runBlockAp(bapOpts(inf, out, { epochs: 0, calib: null })), /lm_head\.weight holds Infinity/);
  assert.ok(!existsSync(out) && !existsSync(out + '.partial'));
  // quantized: a non-finite step size
  const rtn = await rtnTiny(2, 32);
  const qnan = join(work, 'q-nan');
  cpSync(rtn, qnan, { recursive: true });
  const shard = readdirSync(qnan).find((f) => f.startsWith('model-00002-'))!; // block 1
  const ts = readRaw(join(qnan, shard)).map((t) => t);
  writeRaw(join(qnan, shard), withF16At('model.layers.1.self_attn.o_proj.scales', 0, F16_NAN)(ts));
  await assert.rejects(evaluatePerplexity(qnan, CALIB, { seqlen: 64, quiet: true }), new RegExp(`${shard}: tensor model\\.layers\\.1\\.self_attn\\.o_proj\\.scales holds NaN at element 0`));
  await assert.rejects(exportGguf(qnan, join(work, 'nan.gguf')), /o_proj\.scales holds NaN/);
  assert.ok(!existsSync(join(work, 'nan.gguf')));
  // the same checkpoint as E2E-QP's input: refused before any step, nothing written
  const qre = new RegExp(`${shard}: tensor model\\.layers\\.1\\.self_attn\\.o_proj\\.scales holds NaN at element 0`);
  const e2eOut = join(dir('nan-e2e'), 'e2e');
  let steps = 0;
  await assert.rejects(
    runE2eQp({ ...e2eQpDefaults(2), model: qnan, data: CALIB, out: e2eOut, trainSize: 4, seqlen: 32, batchSize: 2, microBatchSize: 2, quiet: true, onStep: () => steps++ }),
    qre,
  );
  assert.equal(steps, 0, 'no training step ran');
  assert.ok(!existsSync(e2eOut) && !existsSync(e2eOut + '.partial') && !existsSync(e2eOut + '.lock'), 'e2e-qp wrote nothing');
  // and as the ONNX export's: refused, no output directory, no partial one
  const onnxOut = join(work, 'nan-onnx');
  await assert.rejects(exportOnnx(qnan, onnxOut), qre);
  assert.ok(!existsSync(onnxOut) && !existsSync(onnxOut + '.partial') && !existsSync(onnxOut + '.lock'), 'the ONNX export wrote nothing');
});

test('a non-finite training loss names block, step and the first non-finite value', async () => {
  const out = join(dir('loss'), 'bap');
  await assert.rejects(
    runBlockAp(bapOpts(TINY, out, { quantLr: 1e38, weightLr: 1e38 })),
    /block 1\/4, epoch 1, step \d+: loss is (NaN|Infinity); first non-finite value: (parameter|step size s|zero point z) \S+ holds (NaN|-?Infinity) at element \d+; stopping/,
  );
  assert.ok(!existsSync(out));
  const rtn = await rtnTiny(2, 32);
  const e2eOut = join(dir('loss-e2e'), 'e2e');
  await assert.rejects(
    runE2eQp({ ...e2eQpDefaults(2), model: rtn, data: CALIB, out: e2eOut, trainSize: 8, seqlen: 32, batchSize: 2, microBatchSize: 2, lr: 1e38, warmupRatio: 0, maxGradNorm: 0, quiet: true }),
    /e2e-qp step \d+ \(samples \d+\.\.\d+\): loss is (NaN|Infinity); first non-finite value: step size of block [1-4]\/4 \S+ holds (NaN|-?Infinity) at element \d+; stopping/,
  );
  assert.ok(!existsSync(e2eOut));
});

test('text that is not text: refused above 1% non-text characters, warned about above 0.1%', async () => {
  assert.equal(NON_TEXT_REFUSE, 0.01);
  assert.equal(NON_TEXT_WARN, 0.001);
  const d = dir('garbage');
  // binary garbage as calibration text
  const bin = join(d, 'random.txt');
  const bytes = new Uint8Array(4096);
  for (let i = 0; i < bytes.length; i++) bytes[i] = (i * 2654435761) >>> 24;
  writeFileSync(bin, bytes);
  await assert.rejects(readDocuments(bin), /random\.txt: \d+\.\d\d% of its \d+ characters are not text .*above the 1% eqat accepts/);
  await refusedBeforeTraining(bapOpts(TINY, join(d, 'out'), { calib: bin }), /random\.txt: .* are not text/);
  await assert.rejects(evaluatePerplexity(TINY, bin, { seqlen: 64, quiet: true }), /random\.txt: .* are not text/);
  // text in Latin-1, not UTF-8: every é is invalid UTF-8
  const latin1 = join(d, 'latin1.jsonl');
  writeFileSync(latin1, Buffer.from('{"instruction": "caf\xe9 cr\xe8me", "output": "\xe9t\xe9"}\n', 'latin1'));
  await assert.rejects(readInstructRecords(latin1), /latin1\.jsonl: .*are not text .*the first, U\+FFFD, on line 1/);
  await assert.rejects(readDocuments(latin1), /latin1\.jsonl: .*are not text/);
  // NUL bytes in a text file
  const nul = 'a'.repeat(990) + '\u0000'.repeat(20);
  assert.throws(() => checkText('nul.txt', nul), /nul\.txt: 1\.98% of its 1010 characters are not text .*U\+0000/);
  // between the thresholds: a warning on stderr, the text is read
  const some = 'a'.repeat(995) + '\ufffd'.repeat(5);
  const written: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((s: string) => (written.push(String(s)), true)) as typeof process.stderr.write;
  try {
    checkText('some.txt', some);
    checkText('clean.txt', 'tab\tnew line\r\nform feed\f' + 'a'.repeat(100));
  } finally {
    process.stderr.write = write;
  }
  assert.equal(written.length, 1);
  assert.match(written[0]!, /^warning: some\.txt: 0\.50% of its 1000 characters are not text .*above 0\.1%/);
});

test('sequence lengths beyond max_position_embeddings are refused in every command, warned within linear RoPE scaling', async () => {
  const d = dir('seqlen');
  const re = /--seqlen 4096: needs 4096 positions, but .*llama-tiny has max_position_embeddings 2048; use at most 2048/;
  await refusedBeforeTraining(bapOpts(TINY, join(d, 'bap'), { seqlen: 4096, trainSize: 2 }), re);
  await assert.rejects(evaluatePerplexity(TINY, CALIB, { seqlen: 4096, quiet: true }), re);
  const rtn = await rtnTiny(2, 32);
  await assert.rejects(
    runE2eQp({ ...e2eQpDefaults(2), model: rtn, data: CALIB, out: join(d, 'e2e'), trainSize: 2, seqlen: 4096, batchSize: 2, microBatchSize: 2, quiet: true }),
    /--seqlen 4096: needs 4096 positions, but .* has max_position_embeddings 2048/,
  );
  assert.throws(
    () => resolveRecipe({ model: TINY, calib: CALIB, wbits: 2, out: join(d, 'q'), e2eQp: { seqlen: 3000 } }, {}, 'r.yaml'),
    /r\.yaml: e2e_qp\.seqlen \(--e2e-qp-seqlen\) 3000: needs 3000 positions/,
  );
  const src = WeightSource.open(TINY);
  try {
    assert.throws(() => generateFromSource(src, [0, 5, 6], { maxNewTokens: 2046 }), /the prompt \(3 tokens\) \+ --max-new-tokens 2046: needs 2049 positions/);
  } finally {
    src.close();
  }
  assert.ok(readdirSync(d).length === 0, 'nothing written');
  // linear RoPE scaling reaches factor × max_position_embeddings, with a warning
  const cfg: ModelConfig = { ...tinyConfig({}), maxPositionEmbeddings: 64, ropeScaling: { type: 'linear', factor: 4 } };
  const written: string[] = [];
  const write = process.stderr.write;
  process.stderr.write = ((s: string) => (written.push(String(s)), true)) as typeof process.stderr.write;
  try {
    checkPositions(cfg, 64, '--seqlen 64', 'm');
    checkPositions(cfg, 200, '--seqlen 200', 'm');
  } finally {
    process.stderr.write = write;
  }
  assert.deepEqual(written, ['warning: --seqlen 200: 200 positions exceed max_position_embeddings 64 of m, within the 256 its linear RoPE scaling reaches\n']);
  assert.throws(() => checkPositions(cfg, 257, '--seqlen 257', 'm'), /--seqlen 257: needs 257 positions, but m has max_position_embeddings 64 \(256 with its linear RoPE scaling\); use at most 256/);
});

test('llama3 RoPE scaling through eqat eval: max_position_embeddings is the limit, refused beyond it before any work; within it runs without a warning', () => {
  // llama-tiny laid out as Llama 3.1 ships: rope_theta at the top, rope_scaling llama3 whose
  // original_max_position_embeddings (16) is below max_position_embeddings (64), the scaled context
  const model = join(dir('llama3-rope'), 'model');
  cpSync(TINY, model, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(model, 'config.json'), 'utf8')) as Record<string, unknown>;
  delete cfg['rope_parameters'];
  Object.assign(cfg, {
    rope_theta: 10000,
    rope_scaling: { rope_type: 'llama3', factor: 8, low_freq_factor: 1, high_freq_factor: 4, original_max_position_embeddings: 16 },
    max_position_embeddings: 64,
  });
  writeFileSync(join(model, 'config.json'), JSON.stringify(cfg, null, 2));
  const data = join(dir('llama3-rope'), 'text.txt');
  writeFileSync(data, readFileSync(CALIB, 'utf8').slice(0, 3000));
  // with its progress on stderr (no --quiet): a run that started evaluating would print it
  const evalCli = (seqlen: number) =>
    spawnSync(process.execPath, [CLI, 'eval', '--model', model, '--data', data, '--seqlen', String(seqlen), '--max-windows', '1', '--threads', '1', '--json'], { encoding: 'utf8' });
  // 65 positions: factor 8 of 16 would reach 128, but the model states 64
  const refused = evalCli(65);
  assert.equal(refused.status, 1, refused.stderr);
  assert.equal(refused.stderr, `eqat: --seqlen 65: needs 65 positions, but ${model} has max_position_embeddings 64 (with its llama3 RoPE scaling: factor 8 does not extend it); use at most 64\n`);
  assert.equal(refused.stdout, '');
  // 64 positions, four times original_max_position_embeddings: no warning, a finite perplexity
  const ran = evalCli(64);
  assert.equal(ran.status, 0, ran.stderr);
  assert.match(ran.stderr, /^eval 1\/\d+ /, 'its progress, the one thing on stderr');
  assert.doesNotMatch(ran.stderr, /warning|position/);
  const result = JSON.parse(ran.stdout.trim().split('\n').at(-1)!) as { ppl: number; seqlen: number; windows: number };
  assert.equal(result.seqlen, 64);
  assert.equal(result.windows, 1);
  assert.ok(Number.isFinite(result.ppl) && result.ppl > 1, `perplexity ${result.ppl}`);
});

test('input paths: missing, a directory for a file, a file for a directory, unreadable, each named with its flag', async (t) => {
  const d = dir('paths');
  const out = join(dir('paths-out'), 'out');
  const none = join(d, 'none.txt');
  await assert.rejects(evaluatePerplexity(TINY, d, { seqlen: 64 }), new RegExp(`--data ${d}: is a directory; pass a \\.txt, \\.jsonl or \\.parquet file`));
  await assert.rejects(evaluatePerplexity(TINY, none, { seqlen: 64 }), /--data .*none\.txt: does not exist/);
  await assert.rejects(evaluatePerplexity(CALIB, CALIB, { seqlen: 64 }), /--model .*calib-sample\.txt: is not a directory; pass a model directory/);
  await assert.rejects(evaluatePerplexity(join(d, 'nomodel'), CALIB, { seqlen: 64 }), /--model .*nomodel: does not exist/);
  await refusedBeforeTraining(bapOpts(TINY, out, { calib: d }), /--calib .*paths: is a directory; pass a \.txt, \.jsonl or \.parquet file/);
  await refusedBeforeTraining(bapOpts(join(d, 'nomodel'), out), /--model .*nomodel: does not exist; pass a Hugging Face model directory/);
  const rtn = await rtnTiny(2, 32);
  const e2e: E2eQpOptions = { ...e2eQpDefaults(2), model: rtn, data: d, out, trainSize: 2, seqlen: 32, batchSize: 2, microBatchSize: 2, quiet: true };
  await assert.rejects(runE2eQp(e2e), /--data .*paths: is a directory; pass a \.txt, \.jsonl or \.parquet text file, or instruction \.jsonl\/\.json/);
  await assert.rejects(runE2eQp({ ...e2e, data: CALIB, model: CALIB }), /--model .*calib-sample\.txt: is not a directory/);
  // the CLI: generate / export / e2e-qp name --model; quantize checks E2E-QP's data before Block-AP
  for (const args of [
    ['generate', '--model', none, '--prompt', 'x'],
    ['export', '--model', none, '--format', 'gguf', '--out', join(d, 'x.gguf')],
    ['e2e-qp', '--model', none, '--data', CALIB, '--out', out],
  ]) {
    const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
    assert.equal(r.status, 1, `${args[0]}: ${r.stderr}`); // a missing input is not a usage error
    assert.match(r.stderr, /--model .*none\.txt: does not exist/, args[0]);
  }
  const dirTxt = join(d, 'corpus.txt');
  mkdirSync(dirTxt);
  const q = spawnSync(process.execPath, [CLI, 'quantize', '--model', TINY, '--calib', CALIB, '--wbits', '2', '--e2e-qp-seqlen', '128', '--e2e-qp-data', dirTxt, '--out', out, '--quiet'], { encoding: 'utf8' });
  rmSync(dirTxt, { recursive: true });
  assert.notEqual(q.status, 0);
  assert.match(q.stderr, /e2e_qp\.data \(--e2e-qp-data\) .*corpus\.txt: is a directory/);
  assert.ok(!existsSync(out + '.block-ap') && !existsSync(out + '.block-ap.partial'), 'Block-AP did not start');
  // unreadable: root reads anything, so this needs an ordinary user
  if (process.getuid?.() === 0) {
    t.diagnostic('running as root: permission-denied paths cannot be made here');
  } else {
    const locked = join(d, 'locked.txt');
    writeFileSync(locked, 'text');
    chmodSync(locked, 0);
    await assert.rejects(evaluatePerplexity(TINY, locked, { seqlen: 64 }), /--data .*locked\.txt: cannot be read \(permission denied\)/);
  }
  assert.deepEqual(readdirSync(d), [], 'nothing written');
});
