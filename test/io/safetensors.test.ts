// Safetensors reader: the bundled llama-tiny checkpoint read tensor by tensor and checked
// against an independent decoding of the file's bytes; one crafted broken file per validation
// error; unusual but valid files; and laziness (a sparse multi-gigabyte file opens and yields
// one small tensor without the rest being read).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readFileSync, rmSync, truncateSync, writeFileSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../../src/engine/native.js';
import { SafetensorsFile, SafetensorsModel } from '../../src/io/safetensors.js';
import { loadConfig } from '../../src/io/hf-config.js';
import { LINEAR_NAMES, linearPath, linearShape } from '../../src/model/config.js';

const FIXTURE = join(packageRoot(), 'fixtures', 'llama-tiny');

function tempDir(): string {
  return mkdtempSync(join(tmpdir(), 'eqat-st-'));
}

/** Bytes of a safetensors file: 8-byte length prefix (or `lengthOverride`), header text, data. */
function craft(header: string | object, data: Uint8Array | number = 0, lengthOverride?: bigint): Uint8Array {
  const h = new TextEncoder().encode(typeof header === 'string' ? header : JSON.stringify(header));
  const d = typeof data === 'number' ? new Uint8Array(data) : data;
  const out = new Uint8Array(8 + h.length + d.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(h.length), true);
  out.set(h, 8);
  out.set(d, 8 + h.length);
  return out;
}

function withFile(bytes: Uint8Array, fn: (path: string) => void): void {
  const dir = tempDir();
  try {
    const p = join(dir, 'model.safetensors');
    writeFileSync(p, bytes);
    fn(p);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** Asserts SafetensorsFile.open(path) throws a message naming the file and matching `re`. */
function assertOpenFails(bytes: Uint8Array, re: RegExp): void {
  withFile(bytes, (p) => {
    assert.throws(
      () => SafetensorsFile.open(p),
      (e: Error) => {
        assert.ok(e.message.includes(p), `message should name the file: ${e.message}`);
        assert.match(e.message, re);
        return true;
      },
    );
  });
}

/** IEEE half → number, written out from the bit layout (independent of src/engine/dtype.ts). */
function halfToNumber(h: number): number {
  const s = h >> 15 ? -1 : 1;
  const e = (h >> 10) & 31;
  const m = h & 1023;
  if (e === 0) return s * m * Math.pow(2, -24);
  if (e === 31) return m ? NaN : s * Infinity;
  return s * Math.pow(2, e - 15) * (1 + m / 1024);
}

test('fixture: every tensor of llama-tiny matches an independent decoding of the bytes', () => {
  const bytes = readFileSync(join(FIXTURE, 'model.safetensors'));
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const n = Number(view.getBigUint64(0, true));
  const header = JSON.parse(bytes.subarray(8, 8 + n).toString('utf8')) as Record<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
  delete (header as Record<string, unknown>).__metadata__;
  const cfg = loadConfig(FIXTURE);

  const expected = ['model.embed_tokens.weight', 'model.norm.weight', 'lm_head.weight'];
  for (let i = 0; i < cfg.numLayers; i++) {
    expected.push(`model.layers.${i}.input_layernorm.weight`, `model.layers.${i}.post_attention_layernorm.weight`);
    for (const l of LINEAR_NAMES) expected.push(`${linearPath(i, l)}.weight`);
  }

  const m = SafetensorsModel.open(FIXTURE);
  try {
    assert.deepEqual([...m.names()].sort(), [...expected].sort());
    assert.deepEqual(m.files(), [join(FIXTURE, 'model.safetensors')]);
    for (let i = 0; i < cfg.numLayers; i++) {
      for (const l of LINEAR_NAMES) assert.deepEqual(m.info(`${linearPath(i, l)}.weight`).shape, linearShape(cfg, l));
    }
    assert.deepEqual(m.info('model.embed_tokens.weight').shape, [cfg.vocabSize, cfg.hiddenSize]);

    let checked = 0;
    for (const name of m.names()) {
      const h = header[name]!;
      const info = m.info(name);
      assert.equal(info.dtype, 'F16');
      assert.equal(h.dtype, 'F16');
      assert.deepEqual(info.shape, h.shape);
      assert.equal(info.byteOffset, 8 + n + h.data_offsets[0]);
      assert.equal(info.byteLength, h.data_offsets[1] - h.data_offsets[0]);

      const raw = m.readRaw(name);
      assert.deepEqual(raw, new Uint8Array(bytes.subarray(info.byteOffset, info.byteOffset + info.byteLength)));

      const t = m.readTensor(name);
      assert.equal(t.dtype, 'f16');
      assert.deepEqual(t.shape, h.shape);

      const f = m.readF32(name);
      assert.equal(f.length, info.byteLength / 2);
      for (let k = 0; k < f.length; k++) {
        const bits = view.getUint16(info.byteOffset + 2 * k, true);
        assert.equal((t.data as Uint16Array)[k], bits);
        const want = halfToNumber(bits);
        if (f[k] !== want && !(Number.isNaN(want) && Number.isNaN(f[k]))) {
          assert.fail(`${name}[${k}]: readF32 gave ${f[k]}, bytes decode to ${want}`);
        }
        checked++;
      }
      // readF32 into a caller's buffer gives the same values.
      const into = new Float32Array(f.length);
      assert.equal(m.readF32(name, into), into);
      assert.deepEqual(into, f);
    }
    assert.ok(checked > 1_000_000, `checked ${checked} values`);
  } finally {
    m.close();
  }
});

test('valid but unusual files: exotic dtypes, scalars, empty tensors, gaps, trailing bytes, padding', () => {
  const header =
    JSON.stringify({
      __metadata__: { format: 'pt', note: 'x' },
      b: { dtype: 'BOOL', shape: [3], data_offsets: [0, 3] },
      q: { dtype: 'F4', shape: [2, 3], data_offsets: [3, 6] },
      e: { dtype: 'F32', shape: [0, 5], data_offsets: [6, 6] },
      s: { dtype: 'F32', shape: [], data_offsets: [8, 12] }, // gap of two bytes before it
      l: { dtype: 'I64', shape: [1], data_offsets: [12, 20] },
      u: { dtype: 'U8', shape: [2], data_offsets: [20, 22] },
      i: { dtype: 'I32', shape: [1], data_offsets: [24, 28] },
    }) + '    ';
  const data = new Uint8Array(28 + 5); // five trailing bytes
  data.set([1, 0, 1, 0x12, 0x34, 0x56], 0);
  new DataView(data.buffer).setFloat32(8, 2.5, true);
  new DataView(data.buffer).setBigInt64(12, -7n, true);
  data.set([200, 7], 20);
  new DataView(data.buffer).setInt32(24, -123456, true);
  withFile(craft(header, data), (p) => {
    const f = SafetensorsFile.open(p);
    try {
      assert.deepEqual(f.metadata, { format: 'pt', note: 'x' });
      assert.deepEqual(f.names(), ['b', 'q', 'e', 's', 'l', 'u', 'i']);
      assert.deepEqual(f.readRaw('b'), new Uint8Array([1, 0, 1]));
      assert.deepEqual(f.readRaw('q'), new Uint8Array([0x12, 0x34, 0x56]));
      assert.equal(f.info('e').byteLength, 0);
      assert.deepEqual(f.readF32('e'), new Float32Array(0));
      const s = f.readTensor('s');
      assert.deepEqual(s.shape, []);
      assert.deepEqual(s.f32, new Float32Array([2.5]));
      assert.equal(new DataView(f.readRaw('l').buffer).getBigInt64(0, true), -7n);
      assert.deepEqual(f.readTensor('u').data, new Uint8Array([200, 7]));
      assert.deepEqual(f.readTensor('i').i32, new Int32Array([-123456]));
      assert.throws(() => f.readTensor('l'), (e: Error) => e instanceof TypeError && /'l'.*I64.*readRaw/.test(e.message) && e.message.includes(p));
      assert.throws(() => f.readF32('i'), (e: Error) => e instanceof TypeError && /readF32: tensor 'i'.*I32/.test(e.message));
      assert.throws(() => f.readF32('s', new Float32Array(2)), (e: Error) => e instanceof RangeError && /out has 2 elements.*'s'.*has 1/.test(e.message));
      assert.throws(() => f.info('nope'), (e: Error) => e.message.includes(p) && /no tensor named 'nope'/.test(e.message));
      assert.throws(() => f.readRaw('nope'), /no tensor named 'nope'/);
      assert.equal(f.has('b'), true);
      assert.equal(f.has('nope'), false);
    } finally {
      f.close();
    }
    assert.throws(() => f.readRaw('b'), /closed/);
    f.close(); // closing twice is harmless
  });
});

test('error: file shorter than 8 bytes', () => {
  assertOpenFails(new Uint8Array(5), /5 bytes, shorter than the 8-byte header length/);
  assertOpenFails(new Uint8Array(0), /0 bytes, shorter than the 8-byte/);
});

test('error: header length larger than the file', () => {
  assertOpenFails(craft('{}', 0, 1000n), /header length 1000 is larger than the file \(10 bytes/);
  assertOpenFails(craft('{}', 0, 0xffffffffffffffffn), /header length 18446744073709551615 is larger than the file/);
});

test('error: header not valid UTF-8, not valid JSON, not an object', () => {
  withFile(craft('{}'), (p) => SafetensorsFile.open(p).close());
  const bad = craft('{}');
  bad[8] = 0xff;
  assertOpenFails(bad, /header is not valid UTF-8/);
  assertOpenFails(craft('{"a": {"dtype": "F32",'), /header is not valid JSON/);
  assertOpenFails(craft(''), /header is not valid JSON/);
  assertOpenFails(craft('[1, 2]'), /header is not a JSON object \(got an array\)/);
  assertOpenFails(craft('17'), /header is not a JSON object/);
});

test('error: malformed tensor entries and metadata', () => {
  assertOpenFails(craft({ w: { dtype: 'Q8', shape: [2], data_offsets: [0, 2] } }, 2), /tensor 'w': unknown dtype 'Q8'/);
  assertOpenFails(craft({ w: { dtype: 3, shape: [2], data_offsets: [0, 2] } }, 2), /tensor 'w': dtype must be a string/);
  assertOpenFails(craft({ w: { dtype: 'U8', shape: [-2], data_offsets: [0, 2] } }, 2), /tensor 'w': shape must be an array of non-negative integers/);
  assertOpenFails(craft({ w: { dtype: 'U8', shape: [2], data_offsets: [0] } }, 2), /tensor 'w': data_offsets must be an array of two integers/);
  assertOpenFails(craft({ w: [1, 2] }), /tensor 'w': expected an object with dtype, shape and data_offsets/);
  assertOpenFails(craft({ w: { dtype: 'U8', shape: [2], data_offsets: [2, 0] } }, 2), /tensor 'w': data_offsets \[2, 0\] end before they begin/);
  assertOpenFails(craft({ __metadata__: { a: 1 } }), /__metadata__\['a'\] must be a string/);
  assertOpenFails(craft({ __metadata__: 'x' }), /__metadata__ must be an object of strings/);
  assertOpenFails(craft({ w: { dtype: 'F4', shape: [3], data_offsets: [0, 2] } }, 2), /3 elements of F4 \(4 bits each\) do not fill whole bytes/);
});

test('error: shape/dtype byte length does not match data_offsets', () => {
  assertOpenFails(
    craft({ w: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 12] } }, 16),
    /tensor 'w': shape \[2, 2\] with dtype F32 needs 16 bytes, but data_offsets \[0, 12\] span 12/,
  );
  assertOpenFails(
    craft({ w: { dtype: 'BF16', shape: [3], data_offsets: [0, 8] } }, 8),
    /tensor 'w': shape \[3\] with dtype BF16 needs 6 bytes, but data_offsets \[0, 8\] span 8/,
  );
});

test('error: data_offsets outside the data section', () => {
  assertOpenFails(
    craft({ a: { dtype: 'U8', shape: [4], data_offsets: [0, 4] }, b: { dtype: 'U8', shape: [4], data_offsets: [100, 104] } }, 8),
    /tensor 'b': data_offsets \[100, 104\] lie outside the data section, which holds 8 bytes/,
  );
  assertOpenFails(craft({ a: { dtype: 'U8', shape: [4], data_offsets: [-4, 0] } }, 8), /tensor 'a': data_offsets \[-4, 0\] lie outside the data section/);
});

test('error: overlapping tensors', () => {
  assertOpenFails(
    craft({ a: { dtype: 'F32', shape: [2], data_offsets: [0, 8] }, b: { dtype: 'F32', shape: [2], data_offsets: [4, 12] } }, 12),
    /tensors 'a' \(data_offsets \[0, 8\]\) and 'b' \(data_offsets \[4, 12\]\) overlap/,
  );
  // Overlap with a tensor that is not the immediate predecessor.
  assertOpenFails(
    craft(
      {
        big: { dtype: 'U8', shape: [10], data_offsets: [0, 10] },
        x: { dtype: 'U8', shape: [2], data_offsets: [2, 4] },
      },
      10,
    ),
    /'big'.*'x'.*overlap/,
  );
});

test('error: truncated file (data section shorter than the largest end offset)', () => {
  const full = craft(
    { a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] }, b: { dtype: 'F32', shape: [4], data_offsets: [16, 32] } },
    32,
  );
  withFile(full, (p) => SafetensorsFile.open(p).close());
  const headerEnd = full.length - 32;
  assertOpenFails(
    full.subarray(0, full.length - 5),
    new RegExp(`file is truncated: its header describes 32 bytes of tensor data \\(file size ${headerEnd + 32}\\), but the file is ${full.length - 5} bytes`),
  );
});

test('error: file truncated after it was opened fails the read, naming the tensor', () => {
  withFile(craft({ a: { dtype: 'F32', shape: [4], data_offsets: [0, 16] } }, 16), (p) => {
    const f = SafetensorsFile.open(p);
    try {
      truncateSync(p, 8 + f.headerLength + 4);
      assert.throws(
        () => f.readF32('a'),
        (e: Error) => e.message.includes(p) && /unexpected end of file reading tensor 'a'.*truncated/.test(e.message),
      );
    } finally {
      f.close();
    }
  });
});

test('error: missing file, directory without a checkpoint, missing tensor in a model', () => {
  const dir = tempDir();
  try {
    const missing = join(dir, 'nope.safetensors');
    assert.throws(() => SafetensorsFile.open(missing), (e: Error) => e.message.includes(missing) && /does not exist/.test(e.message));
    assert.throws(() => SafetensorsFile.open(dir), (e: Error) => e.message.includes(dir) && /not a regular file/.test(e.message));
    assert.throws(() => SafetensorsModel.open(join(dir, 'nodir')), /checkpoint directory does not exist/);
    assert.throws(
      () => SafetensorsModel.open(dir),
      (e: Error) => e.message.includes(dir) && /no model\.safetensors or model\.safetensors\.index\.json/.test(e.message),
    );
    writeFileSync(join(dir, 'consolidated.safetensors'), craft('{}'));
    assert.throws(() => SafetensorsModel.open(dir), /it has consolidated\.safetensors, but no index/);
    writeFileSync(join(dir, 'model.safetensors'), craft({ w: { dtype: 'U8', shape: [1], data_offsets: [0, 1] } }, 1));
    const m = SafetensorsModel.open(dir);
    try {
      assert.deepEqual(m.names(), ['w']);
      assert.throws(
        () => m.readF32('model.norm.weight'),
        (e: Error) => e.message.includes(dir) && e.message.includes('model.safetensors') && /no tensor named 'model\.norm\.weight'/.test(e.message),
      );
    } finally {
      m.close();
    }
    // A path to a single file opens as a one-file model.
    const single = SafetensorsModel.open(join(dir, 'model.safetensors'));
    assert.deepEqual(single.names(), ['w']);
    single.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('lazy: a sparse 3 GiB checkpoint opens and yields one small tensor without reading the rest', () => {
  const dir = tempDir();
  try {
    const bigBytes = 3 * 2 ** 30;
    const header = JSON.stringify({
      big: { dtype: 'BF16', shape: [bigBytes / 2], data_offsets: [0, bigBytes] },
      small: { dtype: 'F32', shape: [3], data_offsets: [bigBytes, bigBytes + 12] },
    });
    const head = craft(header);
    const p = join(dir, 'model.safetensors');
    const fd = openSync(p, 'w');
    try {
      writeSync(fd, head, 0, head.length, 0);
      ftruncateSync(fd, head.length + bigBytes + 12);
      writeSync(fd, new Uint8Array(new Float32Array([1.5, -2, 3.25]).buffer), 0, 12, head.length + bigBytes);
    } finally {
      closeSync(fd);
    }
    const t0 = performance.now();
    const m = SafetensorsModel.open(dir);
    try {
      assert.deepEqual(m.readF32('small'), new Float32Array([1.5, -2, 3.25]));
      assert.equal(m.info('big').byteLength, bigBytes);
    } finally {
      m.close();
    }
    const ms = performance.now() - t0;
    assert.ok(ms < 2000, `open + one small read took ${ms.toFixed(0)} ms`);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
