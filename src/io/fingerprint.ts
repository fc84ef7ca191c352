// The identity of a run's inputs by content: the model directory and the training data file.
// A resumable run records it when it starts (Block-AP's `OUT.partial/state.json`, E2E-QP's saved
// state, a Block-AP checkpoint's eqat-recipe.json that `eqat quantize` may reuse) and compares it
// when it resumes or reuses, so a checkpoint never mixes blocks or steps trained on two corpora
// or two models. Paths alone do not identify an input (a corpus regenerated at the same path),
// nor do size and modification time (a copy changes the time, an edit may keep the size).
//
// - data: the sha256 of the file's bytes, streamed (the token cache keys its entries by the same
//   hash: src/data/token-cache.ts).
// - model: per file of the directory that a run reads (everything but dot files, temporary files,
//   logs and eqat's records of earlier runs), its size and a sha256: of the whole file up to
//   FULL_HASH_BYTES, else of a sample (the first MiB, a safetensors file's whole header, 64
//   evenly spaced 64 KiB chunks and the last 64 KiB: about 5 MiB read per multi-GiB shard, so
//   a 70B model is fingerprinted in a second). A sampled file that changes only between the
//   samples goes unnoticed; a re-download, another fine-tune or a re-sharded file does not.
import { closeSync, fstatSync, openSync, readdirSync, readSync, statSync } from 'node:fs';
import { createHash, type Hash } from 'node:crypto';
import { join, resolve } from 'node:path';
import { isJsonObject } from './errors.js';

/** A data file by content. */
export interface DataIdentity {
  /** The resolved path. */
  path: string;
  bytes: number;
  sha256: string;
}

/** A model directory by content: for each file read, "N bytes, sha256 H" (or "sampled sha256 H"). */
export interface ModelIdentity {
  /** The resolved path. */
  dir: string;
  files: Record<string, string>;
}

/** What a run reads: its model and its data (null for a Block-AP run without training). */
export interface InputIdentity {
  model: ModelIdentity;
  data: DataIdentity | null;
}

/** Files up to this size are hashed whole; larger ones by samples (see the header). */
export const FULL_HASH_BYTES = 64 * 2 ** 20;
const CHUNK = 64 * 1024;
const SAMPLES = 64;
const HEAD = 2 ** 20;
/** A safetensors header longer than this is sampled like the rest (the format allows 100 MB). */
const MAX_HEADER = 100 * 2 ** 20;

/** Files of a model directory that are not inputs: records and logs of earlier runs, temporaries. */
const RECORD_FILES = new Set(['eqat-recipe.json', 'recipe.json']);
function isInputFile(name: string): boolean {
  return !name.startsWith('.') && !name.includes('.tmp') && !name.endsWith('.jsonl') && !name.endsWith('.md') && !RECORD_FILES.has(name);
}

/** Feeds bytes [from, from + length) of an open file into `h`. */
function hashRange(h: Hash, fd: number, from: number, length: number): void {
  const buf = Buffer.allocUnsafe(Math.min(length, 4 * 2 ** 20));
  let at = from;
  const end = from + length;
  while (at < end) {
    const n = readSync(fd, buf, 0, Math.min(buf.length, end - at), at);
    if (n === 0) break;
    h.update(buf.subarray(0, n));
    at += n;
  }
}

/** The sha256 (hex) of a whole file, read in chunks. */
export function fileSha256(path: string): string {
  const fd = openFile(path);
  try {
    const h = createHash('sha256');
    hashRange(h, fd, 0, fstatSync(fd).size);
    return h.digest('hex');
  } finally {
    closeSync(fd);
  }
}

/** Opens a file to fingerprint it; failing, an error naming it. */
function openFile(path: string): number {
  try {
    return openSync(path, 'r');
  } catch (e) {
    throw new Error(`${path}: cannot read it to identify its contents (${(e as Error).message})`);
  }
}

export function dataIdentity(path: string): DataIdentity {
  const full = resolve(path);
  const sha256 = fileSha256(full);
  return { path: full, bytes: statSync(full).size, sha256 };
}

/** "N bytes, sha256 H" of a whole file, or "N bytes, sampled sha256 H" above FULL_HASH_BYTES. */
function fileFingerprint(path: string, size: number): string {
  if (size <= FULL_HASH_BYTES) return `${size} bytes, sha256 ${fileSha256(path)}`;
  const fd = openFile(path);
  try {
    const h = createHash('sha256');
    let head = HEAD;
    if (path.endsWith('.safetensors')) {
      const len = Buffer.alloc(8);
      readSync(fd, len, 0, 8, 0);
      const n = Number(len.readBigUInt64LE(0));
      if (n <= MAX_HEADER) head = Math.max(head, Math.min(size, 8 + n));
    }
    hashRange(h, fd, 0, head);
    for (let i = 0; i < SAMPLES; i++) hashRange(h, fd, Math.floor(((size - CHUNK) * i) / SAMPLES), CHUNK);
    hashRange(h, fd, size - CHUNK, CHUNK);
    return `${size} bytes, sampled sha256 ${h.digest('hex')}`;
  } finally {
    closeSync(fd);
  }
}

export function modelIdentity(dir: string): ModelIdentity {
  const full = resolve(dir);
  const files: Record<string, string> = {};
  for (const name of readdirSync(full).sort()) {
    if (!isInputFile(name)) continue;
    const st = statSync(join(full, name));
    if (st.isFile()) files[name] = fileFingerprint(join(full, name), st.size);
  }
  return { dir: full, files };
}

export function inputIdentity(model: string, data: string | null): InputIdentity {
  return { model: modelIdentity(model), data: data === null ? null : dataIdentity(data) };
}

/** A hash as messages show it: its first 12 hex digits. */
function short(fingerprint: string): string {
  return fingerprint.replace(/([0-9a-f]{12})[0-9a-f]{52}/g, '$1…');
}

/**
 * The first difference between the inputs recorded by a run (`saved`, as read back from its
 * JSON: anything) and this run's, in words naming the input; null when they are the same.
 * `dataName` names the data ("the calibration data"); `then` says where the saved identity is
 * ("in the saved state").
 */
export function inputDifference(saved: unknown, now: InputIdentity, dataName: string, then: string): string | null {
  if (!isJsonObject(saved) || !isJsonObject(saved['model']) || !isJsonObject(saved['model']['files'])) {
    return `no fingerprint of the model and data is recorded ${then}`;
  }
  const show = (v: unknown): string => (v === undefined || v === null ? 'none' : JSON.stringify(v));
  const sd = saved['data'];
  const nd = now.data;
  const savedPath = isJsonObject(sd) ? sd['path'] : null;
  if (savedPath !== (nd?.path ?? null)) return `${dataName} is ${show(savedPath)} ${then}, ${show(nd?.path)} now`;
  if (nd && isJsonObject(sd) && (sd['sha256'] !== nd.sha256 || sd['bytes'] !== nd.bytes)) {
    return `${dataName} ${nd.path} has changed (${sd['bytes']} bytes, sha256 ${short(String(sd['sha256']))} ${then}; ${nd.bytes} bytes, sha256 ${short(nd.sha256)} now)`;
  }
  const sm = saved['model'];
  if (sm['dir'] !== now.model.dir) return `the model is ${show(sm['dir'])} ${then}, ${show(now.model.dir)} now`;
  const savedFiles = sm['files'] as Record<string, unknown>;
  for (const name of new Set([...Object.keys(savedFiles), ...Object.keys(now.model.files)])) {
    const a = savedFiles[name];
    const b = now.model.files[name];
    if (a !== b) {
      return `the model file ${join(now.model.dir, name)} has changed (${a === undefined ? 'absent' : short(String(a))} ${then}, ${b === undefined ? 'absent' : short(b)} now)`;
    }
  }
  return null;
}

/** The error for resume state that cannot be used (`what`: the phase), naming the file and the way out. */
export function unusableStateError(path: string, what: string, problem: string): Error {
  return new Error(`${path}: cannot resume from this ${what} state (${problem}); pass --restart to discard it and start over`);
}

/** The error for an interrupted run of other inputs in `partial`, naming what differs and the way out. */
export function otherRunError(partial: string, what: string, difference: string): Error {
  return new Error(
    `${partial}: holds an interrupted ${what} run with other inputs: ${difference}; rerun with the same settings to resume it, or pass --restart to discard it and start over`,
  );
}
