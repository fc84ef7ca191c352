// Block-AP activation caches: `count` samples of (T, C) f32 hidden states, read and written
// one batch at a time. Kept in RAM while all caches fit the --max-ram budget, otherwise in a
// file on disk (positioned reads/writes through the OS page cache; the file is removed when
// the run ends). At 7B shape with the paper's defaults (4096 + 64 samples × 2048 × 4096) a
// cache is ~140 GB, so the disk path is the normal one for large models.
import { closeSync, openSync, readSync, rmSync, writeSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { explainSystemError } from '../io/output.js';

/** A disk-full or read-only error in a cache file names it and says how to keep the caches in RAM. */
const CACHE_HINT = 'the activation caches go to disk when they exceed --max-ram (default: half of RAM); a larger --max-ram keeps them in RAM';

export class ActivationCache {
  readonly sampleElems: number;
  private readonly ram: Float32Array[] | null;
  private readonly fd: number | null;
  private readonly path: string | null;

  private constructor(
    readonly name: string,
    readonly count: number,
    T: number,
    C: number,
    where: { dir: string } | 'ram',
  ) {
    this.sampleElems = T * C;
    if (where === 'ram') {
      // one array per sample keeps every typed array well below engine size limits
      this.ram = Array.from({ length: count }, () => new Float32Array(this.sampleElems));
      this.fd = null;
      this.path = null;
    } else {
      this.path = join(where.dir, `${name}.f32`);
      try {
        mkdirSync(where.dir, { recursive: true });
        this.fd = openSync(this.path, 'w+');
      } catch (e) {
        throw explainSystemError(e, where.dir, true, CACHE_HINT);
      }
      this.ram = null;
    }
  }

  static inRam(name: string, count: number, T: number, C: number): ActivationCache {
    return new ActivationCache(name, count, T, C, 'ram');
  }

  static onDisk(name: string, count: number, T: number, C: number, dir: string): ActivationCache {
    return new ActivationCache(name, count, T, C, { dir });
  }

  get onDisk(): boolean {
    return this.fd !== null;
  }

  /** Bytes one cache of this shape takes. */
  static bytes(count: number, T: number, C: number): number {
    return count * T * C * 4;
  }

  /** Copies samples [start, start+n) into dst (n, T, C). */
  read(start: number, n: number, dst: Float32Array): void {
    this.check(start, n, dst);
    if (this.ram) {
      for (let i = 0; i < n; i++) dst.set(this.ram[start + i]!, i * this.sampleElems);
      return;
    }
    const bytes = n * this.sampleElems * 4;
    const view = new Uint8Array(dst.buffer, dst.byteOffset, bytes);
    let done = 0;
    while (done < bytes) {
      const r = readSync(this.fd!, view, done, bytes - done, start * this.sampleElems * 4 + done);
      if (r <= 0) throw new Error(`activation cache ${this.path}: short read`);
      done += r;
    }
  }

  /** Copies src (n, T, C) into samples [start, start+n). */
  write(start: number, n: number, src: Float32Array): void {
    this.check(start, n, src);
    if (this.ram) {
      for (let i = 0; i < n; i++) this.ram[start + i]!.set(src.subarray(i * this.sampleElems, (i + 1) * this.sampleElems));
      return;
    }
    const bytes = n * this.sampleElems * 4;
    const view = new Uint8Array(src.buffer, src.byteOffset, bytes);
    let done = 0;
    try {
      while (done < bytes) {
        done += writeSync(this.fd!, view, done, bytes - done, start * this.sampleElems * 4 + done);
      }
    } catch (e) {
      throw explainSystemError(e, this.path!, true, CACHE_HINT);
    }
  }

  /** Releases memory / closes and removes the backing file. */
  free(): void {
    if (this.fd !== null) {
      closeSync(this.fd);
      rmSync(this.path!, { force: true });
    }
    if (this.ram) this.ram.length = 0;
  }

  private check(start: number, n: number, buf: Float32Array): void {
    if (start < 0 || n < 0 || start + n > this.count) {
      throw new RangeError(`activation cache ${this.name}: samples [${start}, ${start + n}) out of [0, ${this.count})`);
    }
    if (buf.length < n * this.sampleElems) {
      throw new RangeError(`activation cache ${this.name}: buffer of ${buf.length} floats, needs ${n * this.sampleElems}`);
    }
  }
}
