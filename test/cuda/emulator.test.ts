// The CUDA kernel emulator itself (test/cuda/emu), through the CudaBackend interface it
// implements: one runner process serves every launch; a kernel reading one element past its
// buffer fails with an Error naming the kernel, and the launch after it runs on a new runner
// with device memory kept; freed device memory is reused and a new allocation reads as zeros;
// a capture replays a launch against the memory as it is at replay time.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { kernelSource } from '../../src/engine/cuda.js';
import { cudaEmulator, EmulatorBackend } from './emu/backend.js';

const emu = cudaEmulator();

/** A fresh emulator with eqat_scale (out[i] = alpha * x[i], i < n) loaded, disposed after fn. */
function withScaleKernel(fn: (b: EmulatorBackend, scale: (out: bigint, x: bigint, alpha: number, n: number) => void) => void): void {
  const b = cudaEmulator() as EmulatorBackend;
  try {
    const fnHandle = b.getFunction(b.moduleLoad(b.compile(kernelSource('elementwise.cu'), 'elementwise.cu', []).image), 'eqat_scale');
    fn(b, (out, x, alpha, n) => {
      const args = new DataView(new ArrayBuffer(32));
      args.setBigUint64(0, out, true);
      args.setBigUint64(8, x, true);
      args.setFloat32(16, alpha, true);
      args.setBigInt64(24, BigInt(n), true);
      b.launch(fnHandle, [2, 1, 1], [64, 1, 1], 0, args.buffer);
    });
  } finally {
    b.dispose();
  }
}

function download(b: EmulatorBackend, handle: bigint, n: number): number[] {
  const out = new Float32Array(n);
  b.download(handle, out, 0);
  return Array.from(out);
}

const skip = typeof emu === 'string' ? emu : false;

test('emulator: one runner serves every launch; a read past a buffer fails naming the kernel, the next launch runs', { skip }, () => {
  withScaleKernel((b, scale) => {
    const n = 100;
    const x = b.alloc(4 * n), out = b.alloc(4 * n);
    b.upload(x, Float32Array.from({ length: n }, (_, i) => i), 0);
    for (let k = 1; k <= 3; k++) scale(out, x, k, n);
    assert.deepEqual([b.launches, b.runnerStarts], [3, 1]);
    assert.deepEqual(download(b, out, n).slice(0, 3), [0, 3, 6]);
    assert.throws(() => scale(out, x, 5, n + 1), (e: Error) => {
      assert.match(e.message, /^emulated launch of eqat_scale failed: emulator: SIGSEGV \(invalid memory access at 0x[0-9a-f]+\) \(block 1,0,0\)/);
      assert.match(e.message, /device memory is kept/);
      return true;
    });
    assert.deepEqual(download(b, x, n).slice(0, 3), [0, 1, 2], 'device memory survives the failed launch');
    scale(out, x, -1, n);
    assert.deepEqual(download(b, out, n).slice(0, 3), [-0, -1, -2]);
    assert.deepEqual([b.launches, b.runnerStarts], [4, 2]);
    b.free(x);
    b.free(out);
  });
});

test('emulator: freed memory is reused, new allocations read as zeros, buffers stay apart', { skip }, () => {
  withScaleKernel((b, scale) => {
    const big = b.alloc(4 * 50000);
    b.upload(big, new Float32Array(50000).fill(7), 0);
    b.free(big);
    const sizes = [3, 70000, 1, 16385];
    const bufs = sizes.map((n) => b.alloc(4 * n));
    for (const [i, h] of bufs.entries()) assert.ok(download(b, h, sizes[i]!).every((v) => v === 0), `allocation ${i} reads as zeros`);
    for (const [i, h] of bufs.entries()) b.upload(h, new Float32Array(sizes[i]!).fill(i + 1), 0);
    for (const [i, h] of bufs.entries()) scale(h, h, 10, sizes[i]!);
    for (const [i, h] of bufs.entries()) assert.ok(download(b, h, sizes[i]!).every((v) => v === 10 * (i + 1)), `allocation ${i} scaled alone`);
    b.memset0(bufs[1]!, 8);
    assert.deepEqual(download(b, bufs[1]!, 3), [0, 0, 20]);
    for (const h of bufs) b.free(h);
    assert.equal(b.liveAllocations, 0);
  });
});

test('emulator: a captured launch replays on the memory as it is at replay time', { skip }, () => {
  withScaleKernel((b, scale) => {
    const x = b.alloc(8), out = b.alloc(8);
    b.upload(x, new Float32Array([1, 2]), 0);
    b.graphBegin();
    scale(out, x, 3, 2);
    const graph = b.graphEnd();
    assert.equal(b.launches, 0, 'a capture records, it does not run');
    b.upload(x, new Float32Array([4, 5]), 0);
    b.graphLaunch(graph);
    assert.deepEqual(download(b, out, 2), [12, 15]);
    b.graphDestroy(graph);
    b.free(x);
    b.free(out);
  });
});
