// The CUDA kernel emulator's device memory: one file, shared by Node and the runner process
// (test/cuda/emu/runner.h). Node uploads, downloads, clears and runs the reference GEMM with
// positioned reads and writes on it; the runner maps each buffer a launch touches at
// REGION_BASE + its file offset, so kernels work on the file's pages directly and nothing is
// copied per launch. The file lives in /dev/shm where that exists (memory, not disk) and is
// unlinked as soon as it is open: it goes away with the last process holding it.
//
// Placement: each buffer gets a span of whole granules (a multiple of every Linux page size)
// followed by one granule never mapped (the guard), and its data is placed at the END of its
// span, so that the first byte past a buffer is inaccessible in the runner. Freed spans are
// reused (first fit, neighbours merged); reused bytes are cleared, so that a new buffer reads
// as zeros like a fresh one.
import { closeSync, existsSync, ftruncateSync, openSync, readSync, unlinkSync, writeSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Where the runner maps the memory file: file offset x is runner address REGION_BASE + x. */
export const REGION_BASE = 0x2000_0000_0000n;
/** The address space the runner reserves for the file (so the file never grows past it). */
export const REGION_BYTES = 2 ** 40;
/** Span and guard unit: 64 KiB, a multiple of the 4, 16 and 64 KiB pages Linux uses. */
export const GRANULE = 65536;

/** Where one buffer lies in the memory file. */
export interface Placement {
  /** File offset of its span (granule aligned). */
  offset: number;
  /** Bytes of its span (whole granules); the guard granule follows. */
  span: number;
  /** File offset of its first byte: offset + span - bytes. */
  data: number;
}

const ZEROS = new Uint8Array(1 << 20);

export class DeviceMemoryFile {
  readonly fd: number;
  private size = 0;
  /** Free runs (span plus guard) of the file, sorted by offset, never adjacent. */
  private readonly free: { offset: number; bytes: number }[] = [];

  constructor() {
    const dir = existsSync('/dev/shm') ? '/dev/shm' : tmpdir();
    const path = join(dir, `eqat-cuda-emu-${process.pid}-${randomBytes(6).toString('hex')}`);
    this.fd = openSync(path, 'wx+', 0o600);
    unlinkSync(path);
  }

  close(): void {
    closeSync(this.fd);
  }

  /** A placement for `bytes` (>= 1) that reads as zeros. */
  place(bytes: number): Placement {
    const span = Math.ceil(bytes / GRANULE) * GRANULE;
    const need = span + GRANULE;
    const i = this.free.findIndex((f) => f.bytes >= need);
    let offset: number;
    if (i >= 0) {
      const run = this.free[i]!;
      offset = run.offset;
      if (run.bytes === need) this.free.splice(i, 1);
      else {
        run.offset += need;
        run.bytes -= need;
      }
      this.zero(offset + span - bytes, bytes);
    } else {
      offset = this.size;
      if (offset + need > REGION_BYTES) throw new RangeError(`cudaAlloc: the emulator's ${REGION_BYTES}-byte device memory is exhausted`);
      this.size += need;
      ftruncateSync(this.fd, this.size); // the new end of the file reads as zeros
    }
    return { offset, span, data: offset + span - bytes };
  }

  /** Returns a placement's span and guard to the free runs. */
  release(p: Placement): void {
    let offset = p.offset, bytes = p.span + GRANULE;
    let i = this.free.findIndex((f) => f.offset > offset);
    if (i < 0) i = this.free.length;
    const next = this.free[i];
    if (next && offset + bytes === next.offset) {
      bytes += next.bytes;
      this.free.splice(i, 1);
    }
    const prev = this.free[i - 1];
    if (prev && prev.offset + prev.bytes === offset) prev.bytes += bytes;
    else this.free.splice(i, 0, { offset, bytes });
  }

  /** Reads dst.byteLength bytes at file offset `at` into dst. */
  read(at: number, dst: Uint8Array): void {
    for (let done = 0; done < dst.byteLength; ) {
      const n = readSync(this.fd, dst, done, dst.byteLength - done, at + done);
      if (n === 0) throw new Error(`emulator device memory: read past the end of the memory file at ${at + done}`);
      done += n;
    }
  }

  /** Writes src at file offset `at`. */
  write(at: number, src: Uint8Array): void {
    for (let done = 0; done < src.byteLength; ) done += writeSync(this.fd, src, done, src.byteLength - done, at + done);
  }

  /** Clears `bytes` bytes at file offset `at`. */
  zero(at: number, bytes: number): void {
    for (let done = 0; done < bytes; ) {
      const n = Math.min(ZEROS.byteLength, bytes - done);
      this.write(at + done, n === ZEROS.byteLength ? ZEROS : ZEROS.subarray(0, n));
      done += n;
    }
  }
}
