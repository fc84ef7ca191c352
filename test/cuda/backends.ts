// The CUDA backends an op test runs on: the real GPU through the native addon (skipped with
// "no CUDA device: <probe reason>" where there is none) and the CPU emulator of the kernel
// sources (test/cuda/emu; skipped where no host C++ compiler exists). Every CUDA op test
// compares both against the same TypeScript twins the CPU tests use.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeviceAllocations, nativeCudaBackend, setCudaBackend, type CudaBackend } from '../../src/engine/cuda.js';
import { cudaEmulator, EmulatorBackend } from './emu/backend.js';

// Compiled kernels of test runs go to a fresh temporary cache, never ~/.cache.
const cacheDir = mkdtempSync(join(tmpdir(), 'eqat-cuda-test-cache-'));
process.env['EQAT_CACHE_DIR'] = cacheDir;
process.on('exit', () => {
  rmSync(cacheDir, { recursive: true, force: true });
  for (const c of cases ?? []) if (!c.skip && c.name === 'emulator') (c.backend() as EmulatorBackend).dispose();
});

export interface BackendCase {
  name: 'cuda' | 'emulator';
  /** The reason to skip, or false. */
  skip: string | false;
  backend(): CudaBackend;
}

let cases: BackendCase[] | undefined;

export function backendCases(): BackendCase[] {
  if (cases) return cases;
  const native = nativeCudaBackend();
  let reason: string | undefined;
  try {
    const p = native.probe();
    reason = p.available ? undefined : p.reason;
  } catch (e) {
    reason = (e as Error).message;
  }
  // EQAT_TEST_EMULATOR=0 leaves the emulator out (on a GPU machine, to run the device cases alone).
  const emu = process.env['EQAT_TEST_EMULATOR'] === '0' ? 'emulator turned off (EQAT_TEST_EMULATOR=0)' : cudaEmulator();
  cases = [
    { name: 'cuda', skip: reason === undefined ? false : `no CUDA device: ${reason}`, backend: () => native },
    {
      name: 'emulator',
      skip: typeof emu === 'string' ? emu : false,
      backend: () => {
        if (typeof emu === 'string') throw new Error(emu);
        return emu;
      },
    },
  ];
  return cases;
}

/** Runs fn with backend b installed (restoring the native backend after) and checks for leaks. */
export function withBackend(b: CudaBackend, fn: () => void): void {
  setCudaBackend(b);
  const before = b instanceof EmulatorBackend ? b.liveAllocations : 0;
  try {
    fn();
  } finally {
    setCudaBackend(null);
  }
  if (b instanceof EmulatorBackend) assert.equal(b.liveAllocations, before, 'device allocations leaked');
}

/** Asserts identical elements (Object.is: NaN equals NaN, -0 differs from +0). */
export function assertBitExact(actual: ArrayLike<number>, expected: ArrayLike<number>, what: string): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} != ${expected.length}`);
  for (let i = 0; i < actual.length; i++) {
    if (!Object.is(actual[i], expected[i])) assert.fail(`${what}: element ${i}: got ${actual[i]}, expected ${expected[i]}`);
  }
}

/** Device arrays made in one test, freed together. */
export type Scope = DeviceAllocations;

/**
 * Registers one test per backend of backendCases(): `cuda <name> [<backend>]`, run with that
 * backend installed and a Scope freed afterwards.
 */
export function testOnBackends(name: string, body: (s: Scope) => void): void {
  for (const bc of backendCases()) {
    test(`cuda ${name} [${bc.name}]`, { skip: bc.skip }, () =>
      withBackend(bc.backend(), () => {
        const s = new DeviceAllocations();
        try {
          body(s);
        } finally {
          s.free();
        }
      }),
    );
  }
}
