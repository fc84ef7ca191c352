// Lazy reader for Hugging Face safetensors checkpoints: single files and sharded directories.
//
// Format (little endian): an 8-byte unsigned header length N, N bytes of UTF-8 JSON mapping
// each tensor name to {dtype, shape, data_offsets: [begin, end]} (offsets relative to the data
// section that starts at 8 + N), an optional "__metadata__" object of string values, then the
// data section. Opening a file reads and validates only the header; each tensor is fetched on
// demand with positioned reads of exactly its bytes, so opening a 70B sharded checkpoint touches
// a few megabytes and readF32 of one weight reads that weight alone.
//
// Validation is strict about anything that would make a read wrong (unknown dtypes, sizes that
// disagree with shapes, overlapping or out-of-range offsets, truncated files) and lenient about
// what is merely untidy (gaps between tensors, bytes after the last tensor). Every error names
// the file and the problem.
import { closeSync, existsSync, fstatSync, openSync, readFileSync, readSync, readdirSync, statSync } from 'node:fs';
import { endianness } from 'node:os';
import { isAbsolute, join } from 'node:path';
import { toF32 } from '../engine/dtype.js';
import { Tensor, numel } from '../engine/tensor.js';
import { CheckpointError, describeJson, isJsonObject } from './errors.js';

/** Bits per element of every dtype the safetensors format defines. */
const DTYPE_BITS = {
  BOOL: 8,
  F4: 4,
  F6_E2M3: 6,
  F6_E3M2: 6,
  U8: 8,
  I8: 8,
  F8_E5M2: 8,
  F8_E4M3: 8,
  F8_E8M0: 8,
  F8_E4M3FNUZ: 8,
  F8_E5M2FNUZ: 8,
  I16: 16,
  U16: 16,
  F16: 16,
  BF16: 16,
  I32: 32,
  U32: 32,
  F32: 32,
  C64: 64,
  F64: 64,
  I64: 64,
  U64: 64,
} as const;

/** A safetensors element type (the names used in the file header). */
export type SafeDtype = keyof typeof DTYPE_BITS;

/** Every dtype name the reader accepts. */
export const SAFE_DTYPES: readonly SafeDtype[] = Object.keys(DTYPE_BITS) as SafeDtype[];

/** Bits per element of a safetensors dtype (4 and 6 for the packed micro-scaling floats). */
export function safeDtypeBits(dtype: SafeDtype): number {
  return DTYPE_BITS[dtype];
}

/** Headers above this size are rejected as corrupt (the reference implementation's limit). */
export const MAX_HEADER_BYTES = 100_000_000;

/** Largest single read or write request (kernel calls are capped near 2 GiB). */
const IO_CHUNK_BYTES = 1 << 30;

export interface TensorInfo {
  name: string;
  dtype: SafeDtype;
  shape: number[];
  /** Absolute position of the first byte in the file. */
  byteOffset: number;
  byteLength: number;
  /** The .safetensors file holding the tensor. */
  file: string;
}

const STORAGE_DTYPES = 'F32, F16, BF16, I32, U8';

function assertLittleEndianHost(): void {
  if (endianness() !== 'LE') throw new Error('safetensors: this host is big-endian; eqat reads and writes little-endian data only');
}

function bytesOf(a: Float32Array | Uint16Array | Int32Array | Uint8Array): Uint8Array {
  return new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
}

function errnoCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e ? String((e as { code: unknown }).code) : undefined;
}

/** Reads exactly dst.length bytes at `position`; `what` describes the read for the error. */
function preadFully(fd: number, path: string, dst: Uint8Array, position: number, what: string): void {
  let done = 0;
  while (done < dst.length) {
    const want = Math.min(IO_CHUNK_BYTES, dst.length - done);
    const got = readSync(fd, dst, done, want, position + done);
    if (got === 0) {
      throw new CheckpointError(
        path,
        `unexpected end of file reading ${what} (wanted bytes ${position}..${position + dst.length}, file ends at ${position + done}); the file is truncated`,
      );
    }
    done += got;
  }
}

interface ParsedHeader {
  headerLength: number;
  metadata: Record<string, string>;
  tensors: Map<string, TensorInfo>;
  /** Names in file order (by offset). */
  order: string[];
}

interface Entry {
  name: string;
  begin: number;
  end: number;
}

function fmtOffsets(e: Entry): string {
  return `[${e.begin}, ${e.end}]`;
}

/** Reads and validates the header of an open safetensors file. */
function parseHeader(fd: number, path: string, fileSize: number): ParsedHeader {
  if (fileSize < 8) {
    throw new CheckpointError(path, `file is ${fileSize} bytes, shorter than the 8-byte header length that starts every safetensors file`);
  }
  const prefix = new Uint8Array(8);
  preadFully(fd, path, prefix, 0, 'the header length');
  const n = new DataView(prefix.buffer).getBigUint64(0, true);
  if (n > BigInt(fileSize - 8)) {
    throw new CheckpointError(
      path,
      `header length ${n} is larger than the file (${fileSize} bytes, so at most ${fileSize - 8} bytes of header); not a safetensors file, or truncated`,
    );
  }
  const headerLength = Number(n);
  if (headerLength > MAX_HEADER_BYTES) {
    throw new CheckpointError(path, `header length ${headerLength} exceeds the ${MAX_HEADER_BYTES}-byte limit; the file is corrupt`);
  }
  const headerBytes = new Uint8Array(headerLength);
  preadFully(fd, path, headerBytes, 8, 'the header');

  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true }).decode(headerBytes);
  } catch {
    throw new CheckpointError(path, 'header is not valid UTF-8');
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (e) {
    throw new CheckpointError(path, `header is not valid JSON (${(e as Error).message})`);
  }
  if (!isJsonObject(json)) throw new CheckpointError(path, `header is not a JSON object (got ${describeJson(json)})`);

  const dataStart = 8 + headerLength;
  const dataSize = fileSize - dataStart;
  const metadata: Record<string, string> = {};
  const tensors = new Map<string, TensorInfo>();
  const entries: Entry[] = [];

  for (const [name, v] of Object.entries(json)) {
    if (name === '__metadata__') {
      if (!isJsonObject(v)) throw new CheckpointError(path, `__metadata__ must be an object of strings, got ${describeJson(v)}`);
      for (const [k, s] of Object.entries(v)) {
        if (typeof s !== 'string') throw new CheckpointError(path, `__metadata__['${k}'] must be a string, got ${describeJson(s)}`);
        metadata[k] = s;
      }
      continue;
    }
    const where = `tensor '${name}'`;
    if (!isJsonObject(v)) throw new CheckpointError(path, `${where}: expected an object with dtype, shape and data_offsets, got ${describeJson(v)}`);
    const dtype = v.dtype;
    if (typeof dtype !== 'string') throw new CheckpointError(path, `${where}: dtype must be a string, got ${describeJson(dtype)}`);
    if (!Object.hasOwn(DTYPE_BITS, dtype)) {
      throw new CheckpointError(path, `${where}: unknown dtype '${dtype}' (the safetensors dtypes are ${SAFE_DTYPES.join(', ')})`);
    }
    const shape = v.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && (d as number) >= 0)) {
      throw new CheckpointError(path, `${where}: shape must be an array of non-negative integers, got ${JSON.stringify(shape)}`);
    }
    const offs = v.data_offsets;
    if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o))) {
      throw new CheckpointError(path, `${where}: data_offsets must be an array of two integers [begin, end], got ${JSON.stringify(offs)}`);
    }
    const e: Entry = { name, begin: offs[0] as number, end: offs[1] as number };
    if (e.begin < 0 || e.end < 0) {
      throw new CheckpointError(path, `${where}: data_offsets ${fmtOffsets(e)} lie outside the data section (offsets cannot be negative)`);
    }
    if (e.end < e.begin) throw new CheckpointError(path, `${where}: data_offsets ${fmtOffsets(e)} end before they begin`);
    let count = 1;
    for (const d of shape as number[]) count *= d;
    if (!Number.isSafeInteger(count)) throw new CheckpointError(path, `${where}: shape [${shape.join(', ')}] has too many elements`);
    const bits = count * DTYPE_BITS[dtype as SafeDtype];
    if (!Number.isSafeInteger(bits)) throw new CheckpointError(path, `${where}: shape [${shape.join(', ')}] is too large`);
    if (bits % 8 !== 0) {
      throw new CheckpointError(path, `${where}: ${count} elements of ${dtype} (${DTYPE_BITS[dtype as SafeDtype]} bits each) do not fill whole bytes`);
    }
    const need = bits / 8;
    if (e.end - e.begin !== need) {
      throw new CheckpointError(
        path,
        `${where}: shape [${shape.join(', ')}] with dtype ${dtype} needs ${need} bytes, but data_offsets ${fmtOffsets(e)} span ${e.end - e.begin}`,
      );
    }
    entries.push(e);
    tensors.set(name, {
      name,
      dtype: dtype as SafeDtype,
      shape: [...(shape as number[])],
      byteOffset: dataStart + e.begin,
      byteLength: need,
      file: path,
    });
  }

  entries.sort((a, b) => a.begin - b.begin || a.end - b.end || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));

  // Overlaps among non-empty tensors.
  let prev: Entry | null = null;
  for (const e of entries) {
    if (e.end === e.begin) continue;
    if (prev && e.begin < prev.end) {
      throw new CheckpointError(
        path,
        `tensors '${prev.name}' (data_offsets ${fmtOffsets(prev)}) and '${e.name}' (data_offsets ${fmtOffsets(e)}) overlap`,
      );
    }
    if (!prev || e.end > prev.end) prev = e;
  }

  // Everything must lie inside the data section. When the tensors tile [0, maxEnd) exactly, a
  // short data section means the file was cut off; otherwise some offsets are simply wrong.
  let maxEnd = 0;
  for (const e of entries) maxEnd = Math.max(maxEnd, e.end);
  if (maxEnd > dataSize) {
    let contiguous = true;
    let at = 0;
    for (const e of entries) {
      if (e.begin !== at && !(e.begin === e.end && e.begin <= at)) contiguous = false;
      at = Math.max(at, e.end);
    }
    if (contiguous) {
      throw new CheckpointError(
        path,
        `file is truncated: its header describes ${maxEnd} bytes of tensor data (file size ${dataStart + maxEnd}), but the file is ${fileSize} bytes`,
      );
    }
    const bad = entries.find((e) => e.end > dataSize)!;
    throw new CheckpointError(
      path,
      `tensor '${bad.name}': data_offsets ${fmtOffsets(bad)} lie outside the data section, which holds ${dataSize} bytes`,
    );
  }

  return { headerLength, metadata, tensors, order: entries.map((e) => e.name) };
}

/** One .safetensors file; only the header is read at open. */
export class SafetensorsFile {
  readonly path: string;
  readonly metadata: Record<string, string>;
  /** Size of the JSON header in bytes (the data section starts at 8 + headerLength). */
  readonly headerLength: number;
  private fd: number | null;
  private readonly tensors: Map<string, TensorInfo>;
  private readonly order: string[];

  private constructor(path: string, fd: number, h: ParsedHeader) {
    this.path = path;
    this.fd = fd;
    this.metadata = h.metadata;
    this.headerLength = h.headerLength;
    this.tensors = h.tensors;
    this.order = h.order;
  }

  static open(path: string): SafetensorsFile {
    assertLittleEndianHost();
    let fd: number;
    try {
      fd = openSync(path, 'r');
    } catch (e) {
      const code = errnoCode(e);
      if (code === 'ENOENT') throw new CheckpointError(path, 'safetensors file does not exist');
      throw new CheckpointError(path, `cannot open safetensors file (${(e as Error).message})`);
    }
    try {
      const st = fstatSync(fd);
      if (!st.isFile()) throw new CheckpointError(path, 'not a regular file (expected a .safetensors file)');
      return new SafetensorsFile(path, fd, parseHeader(fd, path, st.size));
    } catch (e) {
      closeSync(fd);
      throw e;
    }
  }

  /** Tensor names in file order. */
  names(): string[] {
    return [...this.order];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (!t) throw new CheckpointError(this.path, `no tensor named '${name}' in this file (it holds ${this.tensors.size} tensors)`);
    return { ...t, shape: [...t.shape] };
  }

  private handle(): number {
    if (this.fd === null) throw new Error(`${this.path}: safetensors file is closed`);
    return this.fd;
  }

  private readInto(t: TensorInfo, dst: Uint8Array): void {
    preadFully(this.handle(), this.path, dst, t.byteOffset, `tensor '${t.name}'`);
  }

  /** The tensor's exact bytes, fetched with positioned reads of that range only. */
  readRaw(name: string): Uint8Array {
    const t = this.info(name);
    const out = new Uint8Array(t.byteLength);
    this.readInto(t, out);
    return out;
  }

  /** The tensor in its storage dtype: F32→'f32', F16→'f16', BF16→'bf16', I32→'i32', U8→'u8'. */
  readTensor(name: string): Tensor {
    const t = this.info(name);
    const n = numel(t.shape);
    switch (t.dtype) {
      case 'F32': {
        const a = new Float32Array(n);
        this.readInto(t, bytesOf(a));
        return new Tensor(t.shape, 'f32', a);
      }
      case 'F16':
      case 'BF16': {
        const a = new Uint16Array(n);
        this.readInto(t, bytesOf(a));
        return new Tensor(t.shape, t.dtype === 'F16' ? 'f16' : 'bf16', a);
      }
      case 'I32': {
        const a = new Int32Array(n);
        this.readInto(t, bytesOf(a));
        return new Tensor(t.shape, 'i32', a);
      }
      case 'U8': {
        const a = new Uint8Array(n);
        this.readInto(t, a);
        return new Tensor(t.shape, 'u8', a);
      }
      default:
        throw new TypeError(
          `readTensor: tensor '${name}' in ${this.path} has dtype ${t.dtype}, which an eqat Tensor cannot hold (supported: ${STORAGE_DTYPES}); use readRaw for its bytes`,
        );
    }
  }

  /** An F32/F16/BF16 tensor converted to f32, written into `out` when given (exactly numel long). */
  readF32(name: string, out?: Float32Array): Float32Array {
    const t = this.info(name);
    const n = numel(t.shape);
    if (t.dtype !== 'F32' && t.dtype !== 'F16' && t.dtype !== 'BF16') {
      throw new TypeError(`readF32: tensor '${name}' in ${this.path} has dtype ${t.dtype}; only F32, F16 and BF16 convert to f32`);
    }
    if (out !== undefined) {
      if (!(out instanceof Float32Array)) throw new TypeError(`readF32: out must be a Float32Array (tensor '${name}')`);
      if (out.length !== n) {
        throw new RangeError(`readF32: out has ${out.length} elements, tensor '${name}' [${t.shape.join(', ')}] has ${n}`);
      }
    }
    const dst = out ?? new Float32Array(n);
    if (t.dtype === 'F32') {
      this.readInto(t, bytesOf(dst));
    } else {
      const half = new Uint16Array(n);
      this.readInto(t, bytesOf(half));
      if (n > 0) toF32(t.dtype === 'F16' ? 'f16' : 'bf16', half, dst);
    }
    return dst;
  }

  close(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      this.fd = null;
    }
  }
}

export const SINGLE_FILE_NAME = 'model.safetensors';
export const INDEX_FILE_NAME = 'model.safetensors.index.json';

/**
 * A checkpoint: a directory holding model.safetensors, or model.safetensors.index.json plus
 * the shards its weight_map names (a path to a single .safetensors file also works). Opening
 * reads every shard's header and checks that each indexed tensor is where the index says.
 */
export class SafetensorsModel {
  /** The directory (or single file) that was opened. */
  readonly dir: string;
  /** The index file for a sharded checkpoint, else null. */
  readonly indexPath: string | null;
  private readonly shards: SafetensorsFile[];
  private readonly owner: Map<string, SafetensorsFile>;
  private readonly order: string[];

  private constructor(dir: string, indexPath: string | null, shards: SafetensorsFile[], owner: Map<string, SafetensorsFile>, order: string[]) {
    this.dir = dir;
    this.indexPath = indexPath;
    this.shards = shards;
    this.owner = owner;
    this.order = order;
  }

  static open(dir: string): SafetensorsModel {
    let st;
    try {
      st = statSync(dir);
    } catch {
      throw new CheckpointError(dir, 'checkpoint directory does not exist');
    }
    if (st.isFile()) return SafetensorsModel.fromFiles(dir, null, [SafetensorsFile.open(dir)], null);

    const single = join(dir, SINGLE_FILE_NAME);
    if (existsSync(single)) return SafetensorsModel.fromFiles(dir, null, [SafetensorsFile.open(single)], null);

    const indexPath = join(dir, INDEX_FILE_NAME);
    if (existsSync(indexPath)) return SafetensorsModel.openSharded(dir, indexPath);

    let others: string[] = [];
    try {
      others = readdirSync(dir).filter((f) => f.endsWith('.safetensors'));
    } catch {
      /* unreadable directory: the message below still applies */
    }
    const hint = others.length ? ` (it has ${others.slice(0, 3).join(', ')}${others.length > 3 ? ', …' : ''}, but no index naming them)` : '';
    throw new CheckpointError(dir, `no ${SINGLE_FILE_NAME} or ${INDEX_FILE_NAME} in this directory${hint}`);
  }

  private static openSharded(dir: string, indexPath: string): SafetensorsModel {
    let json: unknown;
    try {
      json = JSON.parse(readFileSync(indexPath, 'utf8'));
    } catch (e) {
      throw new CheckpointError(indexPath, `index is not valid JSON (${(e as Error).message})`);
    }
    if (!isJsonObject(json)) throw new CheckpointError(indexPath, `index is not a JSON object (got ${describeJson(json)})`);
    const wm = json.weight_map;
    if (!isJsonObject(wm)) {
      throw new CheckpointError(indexPath, `'weight_map' must be an object mapping tensor names to shard files, got ${wm === undefined ? 'nothing' : describeJson(wm)}`);
    }
    const byShard = new Map<string, string[]>();
    for (const [name, shard] of Object.entries(wm)) {
      if (typeof shard !== 'string' || shard === '') {
        throw new CheckpointError(indexPath, `weight_map['${name}'] must be a shard file name, got ${describeJson(shard)}`);
      }
      if (isAbsolute(shard) || shard.split(/[\\/]/).includes('..')) {
        throw new CheckpointError(indexPath, `weight_map['${name}'] = '${shard}' must name a file inside the checkpoint directory`);
      }
      let list = byShard.get(shard);
      if (!list) byShard.set(shard, (list = []));
      list.push(name);
    }
    if (byShard.size === 0) throw new CheckpointError(indexPath, "'weight_map' is empty");

    const shardNames = [...byShard.keys()].sort();
    for (const shard of shardNames) {
      const p = join(dir, shard);
      if (!existsSync(p)) {
        const names = byShard.get(shard)!;
        const more = names.length > 1 ? ` and ${names.length - 1} other tensor${names.length > 2 ? 's' : ''}` : '';
        throw new CheckpointError(indexPath, `shard ${p} is missing (the index puts '${names[0]}'${more} in it)`);
      }
    }
    return SafetensorsModel.fromFiles(dir, indexPath, [], { shardNames, byShard });
  }

  private static fromFiles(
    dir: string,
    indexPath: string | null,
    files: SafetensorsFile[],
    index: { shardNames: string[]; byShard: Map<string, string[]> } | null,
  ): SafetensorsModel {
    const owner = new Map<string, SafetensorsFile>();
    const order: string[] = [];
    try {
      if (!index) {
        const f = files[0]!;
        for (const name of f.names()) {
          owner.set(name, f);
          order.push(name);
        }
      } else {
        for (const shard of index.shardNames) {
          const f = SafetensorsFile.open(join(dir, shard));
          files.push(f);
          const wanted = index.byShard.get(shard)!;
          for (const name of wanted) {
            if (!f.has(name)) {
              throw new CheckpointError(indexPath!, `tensor '${name}' is mapped to shard '${shard}', but ${f.path} does not contain it`);
            }
            owner.set(name, f);
          }
          const want = new Set(wanted);
          for (const name of f.names()) if (want.has(name)) order.push(name);
        }
      }
    } catch (e) {
      for (const f of files) f.close();
      throw e;
    }
    return new SafetensorsModel(dir, indexPath, files, owner, order);
  }

  /** Paths of the .safetensors files, in the order names() visits them. */
  files(): string[] {
    return this.shards.map((f) => f.path);
  }

  /** Tensor names, shard by shard in file order. */
  names(): string[] {
    return [...this.order];
  }

  has(name: string): boolean {
    return this.owner.has(name);
  }

  private fileOf(name: string): SafetensorsFile {
    const f = this.owner.get(name);
    if (!f) {
      const where = this.indexPath ? `${this.indexPath}` : this.shards[0]!.path;
      throw new CheckpointError(this.dir, `no tensor named '${name}' in this checkpoint (${where} lists ${this.owner.size} tensors)`);
    }
    return f;
  }

  info(name: string): TensorInfo {
    return this.fileOf(name).info(name);
  }

  readRaw(name: string): Uint8Array {
    return this.fileOf(name).readRaw(name);
  }

  readTensor(name: string): Tensor {
    return this.fileOf(name).readTensor(name);
  }

  readF32(name: string, out?: Float32Array): Float32Array {
    return this.fileOf(name).readF32(name, out);
  }

  close(): void {
    for (const f of this.shards) f.close();
  }
}
