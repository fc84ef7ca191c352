// The launch path without a GPU, through a recording fake backend: kernels are compiled once
// per file with the NVRTC options and cached on disk (a new process — here a new backend —
// loads them from the cache), the declared parameters are checked against the source before
// anything runs, wrappers pick the launch shapes documented in their kernels and pack their
// arguments as the kernels declare them, and bad arguments fail before any launch.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  cudaKernel,
  KERNEL_OPTIONS,
  launchKernel,
  setCudaBackend,
  type CompiledKernelImage,
  type CudaBackend,
  type CudaProbe,
  type DeviceArray,
  type Dim3,
  type GemmArgs,
} from '../../src/engine/cuda.js';
import { scaleCuda } from '../../src/ops/cuda/elementwise.js';
import { rmsnormBackwardCuda, rmsnormForwardCuda } from '../../src/ops/cuda/rmsnorm.js';
import { fakeQuantBackwardAdamwCuda, fakeQuantBackwardCuda, fakeQuantForwardCuda } from '../../src/quant/cuda/fakequant.js';
import { adamwStepCuda } from '../../src/ops/cuda/adamw.js';
import { gptqScaleGradCuda } from '../../src/quant/cuda/gptq.js';
import { swigluForwardCuda } from '../../src/ops/cuda/swiglu.js';

interface Launch {
  fn: string;
  grid: Dim3;
  block: Dim3;
  shared: number;
  args: DataView;
}

class Recorder implements CudaBackend {
  readonly name = 'recorder';
  compiles: { name: string; options: readonly string[] }[] = [];
  moduleLoads = 0;
  launches: Launch[] = [];
  private readonly fnNames = new Map<bigint, string>();
  private next = 100n;
  probe(): CudaProbe {
    return {
      available: true,
      driverVersion: 13000,
      devices: [{ index: 0, name: 'Recorder', computeCapability: [9, 0], totalMemory: 1 }],
      device: 0,
      nvrtcVersion: '13.0',
      nvrtcArchs: [90],
      cublasLt: true,
      cublasLtVersion: null,
      libraries: {},
      errors: {},
    };
  }
  alloc(): bigint {
    throw new Error('not used');
  }
  free(): void {}
  upload(): void {}
  download(): void {}
  memset0(): void {}
  synchronize(): void {}
  memInfo(): { free: number; total: number } {
    return { free: 0, total: 0 };
  }
  compile(_source: string, name: string, options: readonly string[]): CompiledKernelImage {
    this.compiles.push({ name, options });
    return { image: new TextEncoder().encode(`image of ${name}`), kind: 'cubin', arch: 'sm_90', log: '' };
  }
  moduleLoad(): bigint {
    this.moduleLoads++;
    return this.next++;
  }
  getFunction(_module: bigint, name: string): bigint {
    const h = this.next++;
    this.fnNames.set(h, name);
    return h;
  }
  launch(fn: bigint, grid: Dim3, block: Dim3, shared: number, args: ArrayBuffer): void {
    this.launches.push({ fn: this.fnNames.get(fn)!, grid, block, shared, args: new DataView(args) });
  }
  gemm(_g: GemmArgs): void {}
}

const arr = (length: number, handle: bigint, dtype: 'f32' | 'bf16' = 'f32'): DeviceArray => ({
  handle,
  dtype,
  length,
  bytes: length * (dtype === 'f32' ? 4 : 2),
  owner: false,
});

function withRecorder(fn: (r: Recorder) => void): Recorder {
  const r = new Recorder();
  setCudaBackend(r);
  try {
    fn(r);
  } finally {
    setCudaBackend(null);
  }
  return r;
}

test('kernels compile once per file with the NVRTC options, then come from the disk cache', () => {
  const cache = mkdtempSync(join(tmpdir(), 'eqat-launch-cache-'));
  const saved = process.env['EQAT_CACHE_DIR'];
  process.env['EQAT_CACHE_DIR'] = cache;
  try {
    const first = withRecorder(() => {
      scaleCuda(arr(1000, 0x1000n), arr(1000, 0x9000n), 2);
      scaleCuda(arr(10, 0x1000n), arr(10, 0x9000n), 3);
    });
    assert.deepEqual(first.compiles, [{ name: 'elementwise.cu', options: KERNEL_OPTIONS }]);
    assert.equal(first.moduleLoads, 1);
    assert.equal(readdirSync(join(cache, 'cuda')).length, 1);
    const [l] = first.launches;
    assert.equal(l!.fn, 'eqat_scale');
    assert.deepEqual([l!.grid, l!.block, l!.shared], [[4, 1, 1], [256, 1, 1], 0]);
    assert.equal(l!.args.byteLength, 32);
    assert.equal(l!.args.getBigUint64(0, true), 0x1000n);
    assert.equal(l!.args.getBigUint64(8, true), 0x9000n);
    assert.equal(l!.args.getFloat32(16, true), 2);
    assert.equal(l!.args.getBigInt64(24, true), 1000n);

    const second = withRecorder(() => scaleCuda(arr(5, 0x1000n), arr(5, 0x9000n), 2));
    assert.equal(second.compiles.length, 0, 'a new backend (process) finds the compiled file on disk');
    assert.equal(second.moduleLoads, 1);
  } finally {
    if (saved === undefined) delete process.env['EQAT_CACHE_DIR'];
    else process.env['EQAT_CACHE_DIR'] = saved;
    rmSync(cache, { recursive: true, force: true });
  }
});

test('a wrapper whose parameters disagree with the kernel source fails before launching', () => {
  const wrong = cudaKernel('elementwise.cu', 'eqat_scale', ['ptr', 'ptr', 'f32']);
  const missing = cudaKernel('elementwise.cu', 'eqat_no_such_kernel', []);
  const r = withRecorder(() => {
    assert.throws(
      () => launchKernel(wrong, 1, 32, [1n, 2n, 1]),
      /elementwise\.cu:eqat_scale: the wrapper passes \(ptr, ptr, f32\) but the source declares \(float\* out, const float\* x, float alpha, long long n\)/,
    );
    assert.throws(() => launchKernel(missing, 1, 32, []), /no extern "C" __global__ kernel of that name in elementwise\.cu/);
    assert.throws(() => launchKernel(wrong, [1, 0, 1], 32, [1n, 2n, 1]), /launchKernel: grid must be positive integers/);
  });
  assert.equal(r.launches.length, 0);
});

test('wrappers choose their launch shapes as their kernels expect', () => {
  const r = withRecorder(() => {
    rmsnormForwardCuda(arr(65 * 130, 0x10000n), arr(65, 0x20000n), arr(65 * 130, 0x30000n), arr(130, 0x40000n), 65, 130, 1e-5);
    rmsnormForwardCuda(arr(3, 0x10000n), arr(3, 0x20000n), arr(3, 0x30000n), arr(1, 0x40000n), 3, 1, 1e-5);
    rmsnormBackwardCuda(arr(2 * 300, 1n << 20n), arr(300, 2n << 20n), arr(600, 3n << 20n), arr(600, 4n << 20n), arr(300, 5n << 20n), arr(2, 6n << 20n), 2, 300);
    fakeQuantForwardCuda(arr(17 * 130, 0x10000n), arr(17 * 130, 0x20000n), arr(34, 0x30000n), arr(34, 0x40000n), 17, 130, 4, 65);
    fakeQuantForwardCuda(arr(20 * 128, 0x10000n, 'bf16'), arr(20 * 128, 0x20000n), arr(40, 0x30000n), arr(40, 0x40000n), 20, 128, 2, 64);
    fakeQuantForwardCuda(arr(20 * 128, 0x10008n, 'bf16'), arr(20 * 128, 0x20000n), arr(40, 0x30000n), arr(40, 0x40000n), 20, 128, 2, 64);
    fakeQuantBackwardCuda(arr(2560, 0x10000n), arr(40, 0x20000n), arr(40, 0x30000n), arr(2560, 0x40000n), arr(2560, 0x50000n), arr(40, 0x60000n), arr(40, 0x70000n), 20, 128, 2, 64);
    swigluForwardCuda(arr(0, 0n), arr(0, 0n), arr(0, 0n)); // nothing to do: no launch
    // step-size gradients: 70 rows (3 blocks of 32) by spans of 256 columns (4 groups of 64), or one 512-wide group
    const dev = (length: number, handle: bigint, dtype: 'i32' | 'u8'): DeviceArray => ({ handle, dtype, length, bytes: length * (dtype === 'i32' ? 4 : 1), owner: false });
    for (const [I, G] of [[512, 64], [1024, 512]] as const) {
      const w = { O: 70, I, bits: 2, G, qweight: dev((I / 16) * 70, 0x100000n, 'i32'), zeros: dev((70 * I) / G, 0x200000n, 'u8') };
      gptqScaleGradCuda(arr((70 * I) / G, 0x300000n), arr(70 * I, 0x400000n), w);
    }
  });
  const shapes = r.launches.map((l) => [l.fn, l.grid[0], l.block[0]]);
  assert.deepEqual(shapes, [
    ['eqat_rmsnorm_forward', 65, 160], // one block per row, C rounded up to whole warps
    ['eqat_rmsnorm_forward', 3, 32],
    ['eqat_rmsnorm_backward_dx', 2, 256],
    ['eqat_rmsnorm_backward_dweight', 10, 256], // 32 columns per block
    ['eqat_fakequant_forward', 9, 256], // one thread per element
    ['eqat_fakequant_forward_bf16_x8', 2, 256], // 8 elements per thread: G % 8 = 0, 16-byte aligned
    ['eqat_fakequant_forward_bf16', 10, 256], // out only 8-byte aligned: one element per thread
    ['eqat_fakequant_backward', 2, 256], // a block per tile of 32 groups
    ['eqat_gptq_scale_grad', 6, 256], // 3 row blocks × 2 spans of 4 groups
    ['eqat_gptq_scale_grad', 6, 256], // 3 row blocks × 2 one-group spans (each 2 chunks)
  ]);
  const fq = r.launches[4]!.args;
  assert.equal(fq.getBigInt64(32, true), BigInt(17 * 130));
  assert.equal(fq.getInt32(40, true), 65, 'G');
  assert.equal(fq.getInt32(48, true), 15, 'qmax for 4 bits');
});

test('wrappers reject bad arguments before any launch, naming the op and argument', () => {
  const r = withRecorder(() => {
    assert.throws(() => scaleCuda(arr(3, 1n), arr(4, 2n), 1), /scaleCuda: out: expected 4 elements, got 3/);
    assert.throws(() => scaleCuda(arr(4, 1n, 'bf16'), arr(4, 2n), 1), /scaleCuda: out: expected a f32 device array, got bf16/);
    assert.throws(
      () => rmsnormForwardCuda(arr(6, 1n), arr(2, 2n), arr(6, 3n), arr(2, 4n), 2, 3, 1e-5),
      /rmsnormForwardCuda: weight: expected 3 elements \(C\), got 2/,
    );
    assert.throws(() => rmsnormForwardCuda(arr(6, 1n), arr(2, 2n), arr(6, 3n), arr(3, 4n), 2, 3, -1), /eps must be a finite number >= 0/);
    assert.throws(
      () => fakeQuantForwardCuda(arr(12, 1n), arr(12, 2n), arr(3, 3n), arr(3, 4n), 3, 4, 4, 3),
      /fakeQuantForwardCuda: group size G = 3 does not divide in_features I = 4/,
    );
    assert.throws(() => fakeQuantForwardCuda(arr(12, 1n), arr(12, 2n), arr(3, 3n), arr(3, 4n), 3, 4, 9, 4), /bits must be an integer in \[2, 8\]/);
    const p = arr(8, 0x1000n), g = arr(8, 0x2000n), m = arr(8, 0x3000n), h = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0, step: 1 };
    assert.throws(() => adamwStepCuda(p, g, arr(8, 0x1010n), arr(8, 0x4000n), h, arr(8, 0x5000n)), /adamwStepCuda: arguments 'param' and 'm' share storage/);
    assert.throws(() => adamwStepCuda(p, g, m, arr(8, 0x4000n), { ...h, step: 0 }, arr(8, 0x5000n)), /hyperparameter 'step' must be an integer >= 1/);
    const fq = (w: bigint, m: bigint) =>
      fakeQuantBackwardAdamwCuda(arr(64, w), arr(64, m), arr(64, 0x9000n), arr(8, 0xa000n), arr(8, 0xb000n), arr(8, 0xc000n), arr(64, 0xd000n), arr(8, 0xe000n), arr(8, 0xf000n), 2, 32, 2, 8);
    assert.throws(() => fq(0x1000n, 0x1080n), /fakeQuantBackwardAdamwCuda: arguments 'w' and 'm' share storage/);
    assert.throws(() => fakeQuantBackwardAdamwCuda(arr(64, 0x1000n), arr(64, 0x2000n), arr(64, 0x3000n), arr(7, 0x4000n), arr(8, 0x5000n), arr(8, 0x6000n), arr(64, 0x7000n), arr(8, 0x8000n), arr(8, 0x9000n), 2, 32, 2, 8), /fakeQuantBackwardAdamwCuda: scalars: expected 8 elements, got 7/);
  });
  assert.equal(r.launches.length, 0);
});
