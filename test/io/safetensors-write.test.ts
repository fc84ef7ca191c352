// Safetensors writer: round trips of all five dtypes with metadata, byte-for-byte determinism,
// the exact layout (padding, alignment, key order) against known reference bytes, atomic
// replacement, argument validation, and a two-shard checkpoint with its index read back
// through SafetensorsModel (plus the index errors: missing shard, tensor not in its shard).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Rng } from '../../src/engine/random.js';
import { bf16ToF32Ref, f16ToF32Ref, f32ToBf16Ref, f32ToF16Ref } from '../../src/engine/dtype.js';
import { SafetensorsFile, SafetensorsModel } from '../../src/io/safetensors.js';
import { writeSafetensors, type TensorToWrite } from '../../src/io/safetensors-write.js';

function withDir(fn: (dir: string) => void): void {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-stw-'));
  try {
    fn(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

function sampleTensors(seed = 3): TensorToWrite[] {
  const rng = new Rng(seed);
  const f32 = new Float32Array(3 * 7);
  rng.fillNormal(f32, 1);
  const h = new Float32Array(17);
  rng.fillNormal(h, 2);
  const b = new Float32Array(33);
  rng.fillNormal(b, 3);
  const i32 = Int32Array.from({ length: 5 }, (_, i) => (i - 2) * 1_000_003);
  const u8 = Uint8Array.from({ length: 7 }, (_, i) => (i * 37) & 255);
  return [
    { name: 'a.u8', dtype: 'U8', shape: [7], data: u8 }, // odd byte count first: exercises alignment
    { name: 'b.f16', dtype: 'F16', shape: [17], data: Uint16Array.from(h, f32ToF16Ref) },
    { name: 'c.f32', dtype: 'F32', shape: [3, 7], data: f32 },
    { name: 'd.bf16', dtype: 'BF16', shape: [3, 11], data: Uint16Array.from(b, f32ToBf16Ref) },
    { name: 'e.i32', dtype: 'I32', shape: [5, 1], data: i32 },
    { name: 'f.empty', dtype: 'F32', shape: [0, 4], data: new Float32Array(0) },
    { name: 'g.scalar', dtype: 'F32', shape: [], data: new Float32Array([42.5]) },
  ];
}

/** Concatenated bytes of byte lists, UTF-8 strings and raw buffers. */
function cat(...parts: (number[] | string | ArrayBuffer)[]): Uint8Array {
  const chunks = parts.map((x) => (typeof x === 'string' ? new TextEncoder().encode(x) : x instanceof ArrayBuffer ? new Uint8Array(x) : Uint8Array.from(x)));
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.length;
  }
  return out;
}

function fileBytes(path: string): Uint8Array {
  return new Uint8Array(readFileSync(path));
}

const META = { format: 'pt', 'eqat.bits': '4', 'a key': 'välue ✓' };

test('round trip: all five dtypes, odd shapes, scalar, empty tensor, metadata', () => {
  withDir((dir) => {
    const p = join(dir, 'out.safetensors');
    const ts = sampleTensors();
    writeSafetensors(p, ts, META);
    const f = SafetensorsFile.open(p);
    try {
      assert.deepEqual(f.metadata, META);
      assert.deepEqual([...f.names()].sort(), ts.map((t) => t.name).sort());
      for (const t of ts) {
        const info = f.info(t.name);
        assert.equal(info.dtype, t.dtype);
        assert.deepEqual(info.shape, t.shape);
        assert.deepEqual(f.readRaw(t.name), new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength), t.name);
        const back = f.readTensor(t.name);
        assert.equal(back.dtype, t.dtype.toLowerCase());
        assert.deepEqual(back.shape, t.shape);
        assert.deepEqual(back.data, t.data, t.name);
        if (t.dtype === 'F16' || t.dtype === 'BF16' || t.dtype === 'F32') {
          const ref = t.dtype === 'F16' ? f16ToF32Ref : t.dtype === 'BF16' ? bf16ToF32Ref : (x: number) => x;
          assert.deepEqual(f.readF32(t.name), Float32Array.from(t.data, ref), t.name);
        }
      }
    } finally {
      f.close();
    }
  });
});

test('layout: header padded with spaces to 8, every tensor aligned to its element size, no gaps', () => {
  withDir((dir) => {
    const p = join(dir, 'out.safetensors');
    const ts = sampleTensors();
    writeSafetensors(p, ts, META);
    const bytes = readFileSync(p);
    const n = Number(bytes.readBigUInt64LE(0));
    assert.equal(n % 8, 0);
    const headerText = bytes.subarray(8, 8 + n).toString('utf8');
    const trimmed = headerText.trimEnd();
    assert.ok(headerText.slice(trimmed.length).split('').every((c) => c === ' '));
    assert.ok(n - Buffer.byteLength(trimmed) < 8);
    // Header lists tensors in the caller's order, __metadata__ first with sorted keys.
    const keyOrder = [...trimmed.matchAll(/"([^"]+)":\{"dtype"/g)].map((m) => m[1]);
    assert.deepEqual(keyOrder, ts.map((t) => t.name));
    assert.ok(trimmed.startsWith('{"__metadata__":{"a key":"välue ✓","eqat.bits":"4","format":"pt"},'));
    const header = JSON.parse(trimmed) as Record<string, { dtype: string; data_offsets: [number, number] }>;
    const size: Record<string, number> = { F32: 4, I32: 4, F16: 2, BF16: 2, U8: 1 };
    const spans: [number, number][] = [];
    for (const t of ts) {
      const [b, e] = header[t.name]!.data_offsets;
      assert.equal((8 + n + b) % size[t.dtype]!, 0, `${t.name} starts at ${8 + n + b}`);
      spans.push([b, e]);
    }
    spans.sort((x, y) => x[0] - y[0] || x[1] - y[1]);
    let at = 0;
    for (const [b, e] of spans) {
      assert.equal(b, at);
      at = e;
    }
    assert.equal(8 + n + at, bytes.length);
  });
});

test('layout: exact bytes of small files match the format reference', () => {
  withDir((dir) => {
    // One F32 tensor [1, 2, 3] named attn.0 holding 0..5; no metadata.
    const p = join(dir, 'a.safetensors');
    writeSafetensors(p, [{ name: 'attn.0', dtype: 'F32', shape: [1, 2, 3], data: new Float32Array([0, 1, 2, 3, 4, 5]) }]);
    const header = '{"attn.0":{"dtype":"F32","shape":[1,2,3],"data_offsets":[0,24]}}';
    const want = cat([64, 0, 0, 0, 0, 0, 0, 0], header.padEnd(64, ' '), new Float32Array([0, 1, 2, 3, 4, 5]).buffer);
    assert.deepEqual(fileBytes(p), want);
    // No tensors, metadata only.
    const q = join(dir, 'b.safetensors');
    writeSafetensors(q, [], { framework: 'pt' });
    assert.deepEqual(fileBytes(q), cat([40, 0, 0, 0, 0, 0, 0, 0], '{"__metadata__":{"framework":"pt"}}'.padEnd(40, ' ')));
    // Nothing at all.
    const r = join(dir, 'c.safetensors');
    writeSafetensors(r, []);
    assert.deepEqual(fileBytes(r), cat([8, 0, 0, 0, 0, 0, 0, 0], '{}      '));
    SafetensorsFile.open(r).close();
  });
});

test('determinism: same input gives identical bytes; metadata insertion order does not matter', () => {
  withDir((dir) => {
    const a = join(dir, 'a.safetensors');
    const b = join(dir, 'b.safetensors');
    const c = join(dir, 'c.safetensors');
    writeSafetensors(a, sampleTensors(), META);
    writeSafetensors(b, sampleTensors(), META);
    const reordered: Record<string, string> = {};
    for (const k of Object.keys(META).reverse()) reordered[k] = META[k as keyof typeof META];
    writeSafetensors(c, sampleTensors(), reordered);
    const ba = readFileSync(a);
    assert.deepEqual(readFileSync(b), ba);
    assert.deepEqual(readFileSync(c), ba);
    // Different data gives different bytes (the comparison can fail).
    writeSafetensors(b, sampleTensors(4), META);
    assert.notDeepEqual(readFileSync(b), ba);
  });
});

test('integer-like tensor names keep the caller order in the header', () => {
  withDir((dir) => {
    const p = join(dir, 'n.safetensors');
    const names = ['z', '10', '2', 'a'];
    writeSafetensors(p, names.map((name, i) => ({ name, dtype: 'U8', shape: [1], data: new Uint8Array([i]) })));
    const bytes = readFileSync(p);
    const text = bytes.subarray(8, 8 + Number(bytes.readBigUInt64LE(0))).toString('utf8');
    assert.deepEqual([...text.matchAll(/"([^"]+)":\{/g)].map((m) => m[1]), names);
    const f = SafetensorsFile.open(p);
    assert.deepEqual(f.names(), names);
    assert.deepEqual(names.map((nm) => f.readRaw(nm)[0]), [0, 1, 2, 3]);
    f.close();
  });
});

test('atomic: replaces an existing file, leaves no temp files, and a failed write keeps the old file', () => {
  withDir((dir) => {
    const p = join(dir, 'model.safetensors');
    writeFileSync(p, 'old contents');
    writeSafetensors(p, sampleTensors(), META);
    assert.deepEqual(readdirSync(dir), ['model.safetensors']);
    const good = readFileSync(p);
    assert.throws(() =>
      writeSafetensors(p, [{ name: 'x', dtype: 'F32', shape: [2], data: new Float32Array(3) }]),
    );
    assert.deepEqual(readFileSync(p), good);
    assert.deepEqual(readdirSync(dir), ['model.safetensors']);
    // A destination in a missing directory fails cleanly.
    assert.throws(() => writeSafetensors(join(dir, 'no', 'x.safetensors'), []), /ENOENT/);
  });
});

test('validation: bad arguments name the op, the tensor and the problem', () => {
  withDir((dir) => {
    const p = join(dir, 'x.safetensors');
    const bad = (t: Partial<TensorToWrite> & Record<string, unknown>, re: RegExp, meta?: Record<string, string>): void => {
      assert.throws(() => writeSafetensors(p, [t as TensorToWrite], meta), (e: Error) => re.test(e.message) && e.message.includes('writeSafetensors'));
    };
    bad({ name: 'w', dtype: 'F16', shape: [2], data: new Float32Array(2) }, /tensor 'w': dtype F16 needs data in a Uint16Array, got Float32Array/);
    bad({ name: 'w', dtype: 'F32', shape: [2], data: new Uint16Array(2) }, /tensor 'w': dtype F32 needs data in a Float32Array, got Uint16Array/);
    bad({ name: 'w', dtype: 'I32', shape: [2], data: new Uint32Array(2) as unknown as Int32Array }, /dtype I32 needs data in a Int32Array, got Uint32Array/);
    bad({ name: 'w', dtype: 'I64' as 'I32', shape: [2], data: new Int32Array(2) }, /tensor 'w': dtype must be one of F32, I32, F16, BF16, U8/);
    bad({ name: 'w', dtype: 'U8', shape: [2, 2], data: new Uint8Array(3) }, /tensor 'w': shape \[2, 2\] has 4 elements, data has 3/);
    bad({ name: 'w', dtype: 'U8', shape: [-1], data: new Uint8Array(0) }, /tensor 'w': shape must be an array of non-negative integers/);
    bad({ name: '', dtype: 'U8', shape: [1], data: new Uint8Array(1) }, /tensors\[0\]: name must be a non-empty string/);
    bad({ name: '__metadata__', dtype: 'U8', shape: [1], data: new Uint8Array(1) }, /__metadata__ is reserved/);
    bad({ name: 'w', dtype: 'U8', shape: [1], data: new Uint8Array(1) }, /metadata\['n'\] must be a string/, { n: 3 } as unknown as Record<string, string>);
    const t: TensorToWrite = { name: 'w', dtype: 'U8', shape: [1], data: new Uint8Array(1) };
    assert.throws(() => writeSafetensors(p, [t, t]), /tensor 'w': duplicate tensor name/);
    assert.deepEqual(readdirSync(dir), []);
  });
});

function twoShardCheckpoint(dir: string): { all: TensorToWrite[]; index: { metadata: object; weight_map: Record<string, string> } } {
  const ts = sampleTensors(9).filter((t) => t.data.length > 0);
  const first = ts.slice(0, 3);
  const second = ts.slice(3);
  const s1 = 'model-00001-of-00002.safetensors';
  const s2 = 'model-00002-of-00002.safetensors';
  writeSafetensors(join(dir, s1), first, { format: 'pt' });
  writeSafetensors(join(dir, s2), second, { format: 'pt' });
  const weight_map: Record<string, string> = {};
  for (const t of second) weight_map[t.name] = s2; // index order need not follow the shards
  for (const t of first) weight_map[t.name] = s1;
  const index = { metadata: { total_size: 1234 }, weight_map };
  writeFileSync(join(dir, 'model.safetensors.index.json'), JSON.stringify(index, null, 2));
  return { all: ts, index };
}

test('sharded: two shards written by writeSafetensors read back through the index', () => {
  withDir((dir) => {
    const { all } = twoShardCheckpoint(dir);
    const m = SafetensorsModel.open(dir);
    try {
      assert.equal(m.indexPath, join(dir, 'model.safetensors.index.json'));
      assert.deepEqual(m.files(), [join(dir, 'model-00001-of-00002.safetensors'), join(dir, 'model-00002-of-00002.safetensors')]);
      assert.deepEqual([...m.names()].sort(), all.map((t) => t.name).sort());
      for (const t of all) {
        assert.ok(m.has(t.name));
        assert.deepEqual(m.readTensor(t.name).data, t.data, t.name);
        assert.equal(m.info(t.name).file.endsWith(all.indexOf(t) < 3 ? '00001-of-00002.safetensors' : '00002-of-00002.safetensors'), true);
      }
      assert.deepEqual(m.readF32('c.f32'), all.find((t) => t.name === 'c.f32')!.data);
      assert.throws(() => m.info('missing.weight'), (e: Error) => /no tensor named 'missing\.weight'/.test(e.message) && e.message.includes(dir));
    } finally {
      m.close();
    }
  });
});

test('sharded errors: missing shard, tensor absent from its shard, bad index JSON, bad weight_map', () => {
  withDir((dir) => {
    const { index } = twoShardCheckpoint(dir);
    const indexPath = join(dir, 'model.safetensors.index.json');
    const writeIndex = (v: unknown): void => writeFileSync(indexPath, typeof v === 'string' ? v : JSON.stringify(v));

    writeIndex({ ...index, weight_map: { ...index.weight_map, 'extra.weight': 'model-00003-of-00003.safetensors' } });
    assert.throws(
      () => SafetensorsModel.open(dir),
      (e: Error) =>
        e.message.startsWith(indexPath) && e.message.includes(join(dir, 'model-00003-of-00003.safetensors')) && /is missing \(the index puts 'extra\.weight' in it\)/.test(e.message),
    );

    writeIndex({ ...index, weight_map: { ...index.weight_map, 'ghost.weight': 'model-00002-of-00002.safetensors' } });
    assert.throws(
      () => SafetensorsModel.open(dir),
      (e: Error) => e.message.startsWith(indexPath) && /tensor 'ghost\.weight' is mapped to shard 'model-00002-of-00002\.safetensors', but .* does not contain it/.test(e.message),
    );

    writeIndex('{"weight_map": {');
    assert.throws(() => SafetensorsModel.open(dir), (e: Error) => e.message.startsWith(indexPath) && /index is not valid JSON/.test(e.message));
    writeIndex({ metadata: {} });
    assert.throws(() => SafetensorsModel.open(dir), /'weight_map' must be an object mapping tensor names to shard files, got nothing/);
    writeIndex({ weight_map: {} });
    assert.throws(() => SafetensorsModel.open(dir), /'weight_map' is empty/);
    writeIndex({ weight_map: { w: 3 } });
    assert.throws(() => SafetensorsModel.open(dir), /weight_map\['w'\] must be a shard file name, got number 3/);
    writeIndex({ weight_map: { w: '../elsewhere.safetensors' } });
    assert.throws(() => SafetensorsModel.open(dir), /must name a file inside the checkpoint directory/);

    // A corrupt shard reports the shard's own path.
    writeIndex(index);
    writeFileSync(join(dir, 'model-00002-of-00002.safetensors'), new Uint8Array(3));
    assert.throws(() => SafetensorsModel.open(dir), (e: Error) => e.message.startsWith(join(dir, 'model-00002-of-00002.safetensors')) && /shorter than/.test(e.message));
  });
});
