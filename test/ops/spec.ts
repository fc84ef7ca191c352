// The plumbing of an op spec run on every backend: the CPU backend always, the CUDA backend on
// a real GPU and on the CPU emulator of the kernel sources (test/cuda/backends.ts: each skipped
// with its reason where it is missing). A spec registers one test per backend,
// `<name> [cpu|cuda|emulator]`, and gets the Backend with helpers that move host arrays in and
// out; the arrays of one test are freed together (and the emulator checks none leaked).
import { test } from 'node:test';
import { BackendAllocations, type Backend } from '../../src/backend/backend.js';
import { cpuBackend } from '../../src/backend/cpu.js';
import { cudaBackend } from '../../src/backend/cuda.js';
import type { DType } from '../../src/engine/dtype.js';
import { backendCases, withBackend } from '../cuda/backends.js';

export type BackendName = 'cpu' | 'cuda' | 'emulator';

/** A backend under test, with the arrays of one test. */
export interface OnBackend {
  readonly name: BackendName;
  readonly be: Backend<unknown>;
  /** A new zeroed array. */
  alloc(dtype: DType, length: number): unknown;
  /** A new array holding a copy of data (f32 or i32). */
  upload(data: Float32Array | Int32Array): unknown;
  /** The f32 contents of an array, on the host. */
  download(a: unknown): Float32Array;
}

function runOn(name: BackendName, be: Backend<unknown>, body: (b: OnBackend) => void): void {
  const mem = new BackendAllocations(be);
  try {
    body({
      name,
      be,
      alloc: (dtype, length) => mem.alloc(dtype, length),
      upload: (data) => mem.upload(data),
      download(a) {
        const out = new Float32Array(be.length(a));
        be.download(a, out);
        return out;
      },
    });
  } finally {
    mem.free();
  }
}

/** Registers `<name> [<backend>]` for the CPU backend and each CUDA backend case. */
export function forEachBackend(name: string, body: (b: OnBackend) => void): void {
  test(`${name} [cpu]`, () => runOn('cpu', cpuBackend, body));
  forEachCudaBackend(name, body);
}

/** Registers `<name> [<backend>]` for each CUDA backend case only (cases of one CUDA path or wrapper). */
export function forEachCudaBackend(name: string, body: (b: OnBackend) => void): void {
  for (const bc of backendCases()) {
    test(`${name} [${bc.name}]`, { skip: bc.skip }, () => withBackend(bc.backend(), () => runOn(bc.name, cudaBackend, body)));
  }
}
