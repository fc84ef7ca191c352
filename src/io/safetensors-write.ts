// Writes safetensors files atomically and deterministically.
//
// The file is written to a temporary name in the destination directory, flushed with fsync and
// renamed over the destination (then the directory is fsynced), so a crash leaves either the
// old file or the complete new one, never a torn file. The same input always yields the same
// bytes: the header lists tensors in the caller's order with keys in a fixed order
// (dtype, shape, data_offsets), __metadata__ (when given) first with its keys sorted, and the
// header is padded with spaces to a multiple of 8 bytes so the data section starts 8-aligned.
//
// Data layout: tensors are stored back to back with no gaps (readers such as the reference
// implementation reject gaps), grouped by element size, largest first, keeping the caller's
// order within a group. Every tensor then starts at a multiple of its element size, which
// memory-mapping readers (PyTorch among them) need to view the bytes as typed data. When all
// tensors share an element size the data order is exactly the caller's order.
import { closeSync, fsyncSync, openSync, renameSync, unlinkSync, writeSync } from 'node:fs';
import { endianness } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { isJsonObject } from './errors.js';

export interface TensorToWrite {
  name: string;
  dtype: 'F32' | 'F16' | 'BF16' | 'I32' | 'U8';
  shape: number[];
  data: Float32Array | Uint16Array | Int32Array | Uint8Array;
}

const ELEMENT: Record<TensorToWrite['dtype'], { bytes: number; array: string }> = {
  F32: { bytes: 4, array: 'Float32Array' },
  I32: { bytes: 4, array: 'Int32Array' },
  F16: { bytes: 2, array: 'Uint16Array' },
  BF16: { bytes: 2, array: 'Uint16Array' },
  U8: { bytes: 1, array: 'Uint8Array' },
};

const IO_CHUNK_BYTES = 1 << 30;

let tempCounter = 0;

function arrayKind(a: unknown): string {
  if (a instanceof Float32Array) return 'Float32Array';
  if (a instanceof Int32Array) return 'Int32Array';
  if (a instanceof Uint16Array) return 'Uint16Array';
  if (a instanceof Uint8Array) return 'Uint8Array';
  return a === null ? 'null' : typeof a === 'object' ? ((a as object).constructor?.name ?? 'object') : typeof a;
}

function validate(path: string, tensors: TensorToWrite[], metadata: Record<string, string> | undefined): void {
  const op = `writeSafetensors(${path})`;
  if (!Array.isArray(tensors)) throw new TypeError(`${op}: tensors must be an array`);
  const seen = new Set<string>();
  tensors.forEach((t, i) => {
    const where = `${op}: tensors[${i}]`;
    if (typeof t?.name !== 'string' || t.name === '') throw new TypeError(`${where}: name must be a non-empty string`);
    const what = `${op}: tensor '${t.name}'`;
    if (t.name === '__metadata__') throw new RangeError(`${what}: the name __metadata__ is reserved`);
    if (seen.has(t.name)) throw new RangeError(`${what}: duplicate tensor name`);
    seen.add(t.name);
    const el = Object.hasOwn(ELEMENT, t.dtype) ? ELEMENT[t.dtype] : undefined;
    if (!el) throw new TypeError(`${what}: dtype must be one of ${Object.keys(ELEMENT).join(', ')}, got ${JSON.stringify(t.dtype)}`);
    const kind = arrayKind(t.data);
    if (kind !== el.array) throw new TypeError(`${what}: dtype ${t.dtype} needs data in a ${el.array}, got ${kind}`);
    if (!Array.isArray(t.shape) || !t.shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new RangeError(`${what}: shape must be an array of non-negative integers, got ${JSON.stringify(t.shape)}`);
    }
    const n = t.shape.reduce((a, d) => a * d, 1);
    if (n !== t.data.length) throw new RangeError(`${what}: shape [${t.shape.join(', ')}] has ${n} elements, data has ${t.data.length}`);
  });
  if (metadata !== undefined) {
    if (!isJsonObject(metadata)) throw new TypeError(`${op}: metadata must be an object of strings`);
    for (const [k, v] of Object.entries(metadata)) {
      if (typeof v !== 'string') throw new TypeError(`${op}: metadata['${k}'] must be a string, got ${typeof v}`);
    }
  }
}

/** The padded header bytes and the data order for a set of tensors (exported for tests). */
export function safetensorsLayout(
  tensors: TensorToWrite[],
  metadata?: Record<string, string>,
): { header: Uint8Array; dataOrder: TensorToWrite[]; dataBytes: number } {
  // Stable sort by element size, largest first: keeps each tensor aligned to its element size.
  const dataOrder = tensors
    .map((t, i) => ({ t, i }))
    .sort((a, b) => ELEMENT[b.t.dtype].bytes - ELEMENT[a.t.dtype].bytes || a.i - b.i)
    .map((x) => x.t);
  const offsets = new Map<string, [number, number]>();
  let at = 0;
  for (const t of dataOrder) {
    const len = t.data.length * ELEMENT[t.dtype].bytes;
    offsets.set(t.name, [at, at + len]);
    at += len;
  }
  // Built by hand rather than from an object: JS objects move integer-like keys to the front.
  const parts: string[] = [];
  if (metadata !== undefined) {
    const keys = Object.keys(metadata).sort();
    parts.push(`"__metadata__":{${keys.map((k) => `${JSON.stringify(k)}:${JSON.stringify(metadata[k])}`).join(',')}}`);
  }
  for (const t of tensors) {
    const [b, e] = offsets.get(t.name)!;
    parts.push(`${JSON.stringify(t.name)}:{"dtype":"${t.dtype}","shape":[${t.shape.join(',')}],"data_offsets":[${b},${e}]}`);
  }
  const json = new TextEncoder().encode(`{${parts.join(',')}}`);
  const padded = new Uint8Array(Math.ceil(json.length / 8) * 8).fill(0x20);
  padded.set(json);
  return { header: padded, dataOrder, dataBytes: at };
}

function writeFully(fd: number, bytes: Uint8Array): void {
  let done = 0;
  while (done < bytes.length) {
    const len = Math.min(IO_CHUNK_BYTES, bytes.length - done);
    done += writeSync(fd, bytes, done, len);
  }
}

/**
 * Writes `tensors` to `path` atomically (temp file in the same directory, fsync, rename) with
 * deterministic bytes; `metadata` becomes the header's __metadata__ object.
 */
export function writeSafetensors(path: string, tensors: TensorToWrite[], metadata?: Record<string, string>): void {
  if (endianness() !== 'LE') throw new Error('writeSafetensors: this host is big-endian; safetensors data is little-endian');
  validate(path, tensors, metadata);
  const { header, dataOrder } = safetensorsLayout(tensors, metadata);
  const prefix = new Uint8Array(8);
  new DataView(prefix.buffer).setBigUint64(0, BigInt(header.length), true);

  const dir = dirname(path);
  const tmp = join(dir, `.${basename(path)}.tmp-${process.pid}-${Date.now()}-${tempCounter++}`);
  let fd: number | null = openSync(tmp, 'wx', 0o644);
  try {
    writeFully(fd, prefix);
    writeFully(fd, header);
    for (const t of dataOrder) writeFully(fd, new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    fsyncSync(fd);
    closeSync(fd);
    fd = null;
    renameSync(tmp, path);
  } catch (e) {
    if (fd !== null) {
      try {
        closeSync(fd);
      } catch {
        /* already failing */
      }
    }
    try {
      unlinkSync(tmp);
    } catch {
      /* nothing to remove */
    }
    // a failed write(2) carries no path: name the file being written (a full disk's message says where)
    const err = e as NodeJS.ErrnoException;
    if (err instanceof Error && typeof err.code === 'string' && err.path === undefined) err.path = path;
    throw e;
  }
  // Make the rename itself durable. Some file systems refuse fsync on a directory; the data
  // is already safe on disk then, so that refusal is not an error.
  try {
    const dfd = openSync(dir, 'r');
    try {
      fsyncSync(dfd);
    } finally {
      closeSync(dfd);
    }
  } catch {
    /* best effort */
  }
}
