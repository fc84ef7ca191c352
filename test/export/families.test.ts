// What every export writes for each family eqat quantizes (test/export/families.ts: llama,
// mistral, qwen2 with q/k/v biases, qwen3 with q/k norms and tied embeddings), checked without
// running any runtime: the GGUF architecture, tensor names and types (node-llama-cpp's GGUF
// reader, skipped when it is not installed), biases and norms bit-identical to the checkpoint's
// (q/k biases in llama.cpp's row order only for the llama architecture); the exported
// tokenizer_config.json's add_bos_token / add_eos_token / clean_up_tokenization_spaces; the CLI's GGUF choices and defaults
// being the library's. Runtime conformance is test/conformance/export-families.test.ts.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exportGguf, GGUF_EMBEDDING_CHOICES, GGUF_TYPE_CHOICES, qkRowPermutation } from '../../src/export/gguf.js';
import { exportOnnx } from '../../src/export/onnx.js';
import { SafetensorsModel } from '../../src/io/safetensors.js';
import { COMMANDS } from '../../src/cli/commands.js';
import { writeRtn } from '../golden.js';
import { deriveFamily, FAMILIES, type Family } from './families.js';
import type { NlcModule } from './runtimes.js';

const WORK = mkdtempSync(join(tmpdir(), 'eqat-families-'));
process.env['EQAT_CACHE_DIR'] ??= join(WORK, 'token-cache');
after(() => rmSync(WORK, { recursive: true, force: true }));

let nlc: NlcModule | null = null;
try {
  nlc = (await import('node-llama-cpp' as string)) as NlcModule;
} catch {
  nlc = null;
}

const ARCH: Record<Family, string> = { llama: 'llama', mistral: 'llama', qwen2: 'qwen2', qwen3: 'qwen3' };

test('the CLI takes the GGUF choices and defaults of the library', () => {
  const flags = COMMANDS['export']!.flags;
  assert.deepEqual(flags['gguf-type']!.choices, GGUF_TYPE_CHOICES);
  assert.deepEqual(flags['embedding-type']!.choices, GGUF_EMBEDDING_CHOICES);
  assert.equal(flags['gguf-type']!.default, 'auto');
  assert.equal(flags['embedding-type']!.default, 'auto');
});

for (const family of FAMILIES) {
  test(`${family}: GGUF architecture, tensors and exact biases/norms; ONNX tokenizer_config adds bos`, async (t) => {
    const ckpt = await writeRtn(deriveFamily(join(WORK, `${family}-fp`), family), join(WORK, `${family}-w2g64`), 2, 64);
    const gguf = await exportGguf(ckpt, join(WORK, `${family}.gguf`));
    assert.equal(gguf.exact, true);
    const onnx = await exportOnnx(ckpt, join(WORK, `${family}-onnx`));
    const tokCfg = JSON.parse(readFileSync(join(onnx.dir, 'tokenizer_config.json'), 'utf8')) as Record<string, unknown>;
    assert.equal(tokCfg['add_bos_token'], true, 'llama-tiny\'s tokenizer adds <s>');
    assert.equal(tokCfg['add_eos_token'], false);
    assert.equal(tokCfg['bos_token'], '<s>', 'the checkpoint\'s own keys are kept');
    assert.equal(tokCfg['clean_up_tokenization_spaces'], false, 'decoding keeps " ." as eqat does (transformers.js would default to true)');
    if (!nlc) return t.skip('node-llama-cpp is not installed');
    const info = await nlc.readGgufFileInfo(gguf.path, { readTensorInfo: true });
    const md = info.metadata as { general: { architecture: string }; tokenizer: { ggml: Record<string, unknown> } };
    assert.equal(md.general.architecture, ARCH[family]);
    assert.equal(md.tokenizer.ggml['add_bos_token'], true);
    const names = new Set(info.tensorInfo!.map((x) => x.name));
    assert.equal(names.has('output.weight'), family !== 'qwen3', 'tied embeddings write no output.weight');
    assert.equal(names.has('blk.0.attn_q.bias'), family === 'qwen2');
    assert.equal(names.has('blk.0.attn_q_norm.weight'), family === 'qwen3');
    // biases and norms: F32, the checkpoint's values (q/k permuted for llama's pair RoPE only)
    const buf = readFileSync(gguf.path);
    const st = SafetensorsModel.open(ckpt);
    try {
      for (const [ggufName, hf, heads] of [
        ['blk.1.attn_q.bias', 'model.layers.1.self_attn.q_proj.bias', 4],
        ['blk.1.attn_k.bias', 'model.layers.1.self_attn.k_proj.bias', 2],
        ['blk.1.attn_q_norm.weight', 'model.layers.1.self_attn.q_norm.weight', 0],
      ] as const) {
        if (!names.has(ggufName)) continue;
        const ti = info.tensorInfo!.find((x) => x.name === ggufName)! as unknown as { ggmlType: number; offset: number | bigint };
        assert.equal(ti.ggmlType, 0, `${ggufName} is F32`);
        const want = st.readF32(hf);
        const perm = ARCH[family] === 'llama' && heads > 0 ? qkRowPermutation(heads, 32) : null;
        const at = dataOffset(buf) + Number(ti.offset);
        const got = new Float32Array(buf.buffer.slice(buf.byteOffset + at, buf.byteOffset + at + 4 * want.length));
        assert.deepEqual(got, perm ? Float32Array.from(perm, (r) => want[r]!) : want, ggufName);
      }
    } finally {
      st.close();
    }
  });
}

/** Start of a GGUF file's data section (after the header and tensor infos, 32-byte aligned). */
function dataOffset(buf: Buffer): number {
  let p = 8;
  const u64 = (): number => {
    const v = Number(buf.readBigUInt64LE(p));
    p += 8;
    return v;
  };
  const str = (): void => {
    const n = u64();
    p += n;
  };
  const nT = u64();
  const nKv = u64();
  const skipValue = (type: number): void => {
    const sizes: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
    if (type === 8) str();
    else if (type === 9) {
      const et = buf.readUInt32LE(p);
      p += 4;
      const n = u64();
      for (let i = 0; i < n; i++) skipValue(et);
    } else p += sizes[type]!;
  };
  for (let i = 0; i < nKv; i++) {
    str();
    const type = buf.readUInt32LE(p);
    p += 4;
    skipValue(type);
  }
  for (let i = 0; i < nT; i++) {
    str();
    const nd = buf.readUInt32LE(p);
    p += 4 + 8 * nd + 4 + 8;
  }
  return Math.ceil(p / 32) * 32;
}
