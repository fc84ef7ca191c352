// Scenarios run by test/cuda/native.test.ts in a child process whose LD_LIBRARY_PATH puts the
// fake CUDA libraries (fake-cuda.c) first; each process loads the libraries once, as in
// production. Usage: node dist/test/cuda/fake/child.js <scenario>. Exits non-zero with the
// failed assertion on stderr.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nativeFn } from '../../../src/engine/native.js';
import {
  allocDevice,
  allocHostStaging,
  CudaStepGraphs,
  deviceView,
  downloadDevice,
  freeDevice,
  KERNEL_OPTIONS,
  kernelSource,
  kernelSourceDir,
  nativeCudaBackend,
  packArgs,
  parseKernelSignatures,
  toDevice,
  uploadDevice,
  zeroDevice,
  type CompiledKernelImage,
  type CudaProbe,
} from '../../../src/engine/cuda.js';
import { Rng } from '../../../src/engine/random.js';
import { Tensor } from '../../../src/engine/tensor.js';
import { bf16ToF32Ref, f32ToBf16Ref } from '../../../src/engine/dtype.js';
import { matmulRef } from '../../../src/ops/ref/matmul.js';
import { matmulCuda } from '../../../src/ops/cuda/matmul.js';
import { scaleCuda } from '../../../src/ops/cuda/elementwise.js';

const probe = (): CudaProbe => nativeFn<() => CudaProbe>('cudaProbe')();
const compile = nativeFn<(src: string, name: string, options: string[]) => CompiledKernelImage>('cudaCompile');
const moduleLoad = nativeFn<(image: Uint8Array) => bigint>('cudaModuleLoad');
const getFunction = nativeFn<(m: bigint, name: string) => bigint>('cudaGetFunction');
const launch = nativeFn<(fn: bigint, grid: number[], block: number[], shared: number, args: ArrayBuffer | ArrayBufferView) => void>(
  'cudaLaunch',
);
const cudaFree = nativeFn<(h: bigint) => void>('cudaFree');
const cudaUpload = nativeFn<(h: bigint, src: ArrayBufferView, off: number) => void>('cudaUpload');
const cudaGemm = nativeFn<(...args: unknown[]) => void>('cudaGemm');

const scenarios: Record<string, () => void> = {
  probe() {
    const p = probe();
    assert.equal(p.available, true, p.reason);
    assert.equal(p.reason, undefined);
    assert.equal(p.driverVersion, 13000);
    assert.deepEqual(p.devices, [
      { index: 0, name: 'Fake GPU 0', computeCapability: [9, 0], totalMemory: 80 * 2 ** 30, multiprocessors: 132 },
    ]);
    assert.equal(p.device, 0);
    assert.equal(p.nvrtcVersion, '13.0');
    assert.deepEqual(p.nvrtcArchs, [75, 80, 86, 89, 90]);
    assert.equal(p.cublasLt, true);
    assert.equal(p.cublasLtVersion, 130000);
    assert.equal(p.libraries.driver, 'libcuda.so.1', 'found by plain name through LD_LIBRARY_PATH');
    assert.equal(p.libraries.nvrtc, 'libnvrtc.so');
    assert.equal(p.libraries.cublasLt, 'libcublasLt.so');
    process.env['EQAT_CUDA_DEVICE'] = '3';
    assert.match(probe().reason!, /^EQAT_CUDA_DEVICE=3 is not a device ordinal in \[0, 1\)$/);
    process.env['FAKE_CUDA_DEVICES'] = '4';
    const four = probe();
    assert.equal(four.available, true);
    assert.equal(four.device, 3);
    assert.equal(four.devices.length, 4);
    process.env['EQAT_CUDA_DISABLE'] = '1';
    assert.equal(probe().reason, 'CUDA disabled by EQAT_CUDA_DISABLE=1');
  },

  'init-fails'() {
    const p = probe();
    assert.equal(p.available, false);
    assert.equal(p.reason, 'cuInit failed: CUDA_ERROR_NO_DEVICE (no CUDA-capable device is detected)');
    assert.deepEqual(p.devices, []);
    assert.throws(() => allocDevice('f32', 4), /^Error: cudaAlloc: CUDA is not available: cuInit failed: CUDA_ERROR_NO_DEVICE/);
  },

  'bad-device-ordinal'() {
    // EQAT_CUDA_DEVICE is '2' or 'x' (set by the test) with one stand-in device
    const p = probe();
    assert.equal(p.available, false);
    assert.match(p.reason ?? '', /^EQAT_CUDA_DEVICE=(2|x) is not a device ordinal in \[0, 1\)$/);
    assert.throws(() => allocDevice('f32', 4), /cudaAlloc: CUDA is not available: EQAT_CUDA_DEVICE=/);
  },

  'driver-lacks-symbols'() {
    const p = probe();
    assert.equal(p.available, false);
    assert.match(p.reason!, /^CUDA driver library libcuda\.so\.1 lacks cuInit, cuDriverGetVersion, .*cuLaunchKernel \(driver too old\?\)$/);
  },

  'no-nvrtc'() {
    const p = probe();
    if (p.errors.nvrtc) {
      assert.equal(p.available, false);
      assert.match(p.reason!, /^NVRTC \(libnvrtc\.so\) not found; dlopen tried: libnvrtc\.so \(libnvrtc\.so: cannot open shared object file/);
      for (const name of ['libnvrtc.so.13', 'libnvrtc.so.12', 'libnvrtc.so.11.2', '/usr/local/cuda/lib64/libnvrtc.so']) {
        assert.ok(p.reason!.includes(name), `reason names ${name}: ${p.reason}`);
      }
      assert.ok(p.reason!.includes('LD_LIBRARY_PATH'));
    } else {
      // a real NVRTC exists on this machine: found by its plain name (loader path, ld.so.cache)
      // or at an absolute path in the standard directories
      assert.match(p.libraries.nvrtc!, /^(\/.*\/)?libnvrtc\.so/);
    }
    assert.equal(p.driverVersion, 13000, 'the driver part is still reported');
  },

  memory() {
    const a = allocDevice('f32', 16);
    const data = Float32Array.from({ length: 16 }, (_, i) => i * 1.5);
    uploadDevice(a, data);
    assert.deepEqual(downloadDevice<Float32Array>(a), data);
    const v = deviceView(a, 5, 4);
    uploadDevice(v, new Float32Array([-1, -2, -3, -4]));
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(a).subarray(4, 10)), [6, -1, -2, -3, -4, 13.5]);
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(v)), [-1, -2, -3, -4]);
    zeroDevice(v);
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(a).subarray(4, 10)), [6, 0, 0, 0, 0, 13.5]);
    // native bounds checks against the live allocation
    assert.throws(() => cudaUpload(a.handle, new Float32Array(17), 0), /cudaUpload: argument 'handle': device range \[0x[0-9a-f]+, \+68 bytes\) is not inside a live allocation/);
    assert.throws(() => cudaUpload(a.handle + 8n, new Float32Array(15), 0), /not inside a live allocation/);
    assert.throws(() => cudaUpload(a.handle, new Float32Array(1), 64), /not inside a live allocation/);
    assert.throws(() => cudaUpload(a.handle, new Float32Array(1), -4), /cudaUpload: argument 'byteOffset' must be >= 0/);
    assert.throws(() => cudaUpload(12345n, new Float32Array(1), 0), /not inside a live allocation/);
    assert.throws(() => cudaUpload(a.handle, [1, 2] as unknown as Float32Array, 0), /cudaUpload: argument 'src' must be a typed array/);
    assert.throws(() => nativeFn<(n: number) => bigint>('cudaAlloc')(0), /cudaAlloc: argument 'bytes' must be >= 1/);
    const info = nativeFn<() => { free: number; total: number }>('cudaMemInfo')();
    assert.equal(info.total, 80 * 2 ** 30);
    freeDevice(a);
    assert.throws(() => cudaFree(a.handle), /cudaFree: argument 'handle' is not a live allocation from cudaAlloc/);
    assert.throws(() => cudaFree(1 as unknown as bigint), /cudaFree: argument 'handle' must be a BigInt handle/);
    const empty = allocDevice('f32', 0);
    assert.equal(empty.handle, 0n);
    freeDevice(empty);
    const bf = toDevice(new Uint16Array([0x3f80, 0xc000]), 'bf16');
    assert.deepEqual(Array.from(downloadDevice<Uint16Array>(bf)), [0x3f80, 0xc000]);
    freeDevice(bf);
  },

  compile() {
    const src = 'extern "C" __global__ void fill(float* out, int n, float v) {}';
    const c = compile(src, 'fill.cu', ['--std=c++17', '--fmad=false']);
    assert.equal(c.kind, 'cubin');
    assert.equal(c.arch, 'sm_90');
    assert.equal(c.log, 'options: --std=c++17 --fmad=false --gpu-architecture=sm_90');
    assert.equal(Buffer.from(c.image).toString('latin1'), '\x7fELF fake cubin for sm_90');
    // NVRTC older than the GPU: PTX for the newest architecture it knows, JIT-compiled by the driver
    process.env['FAKE_NVRTC_ARCHS'] = '75,80,86';
    const ptx = compile(src, 'fill.cu', []);
    assert.equal(ptx.kind, 'ptx');
    assert.equal(ptx.arch, 'compute_86');
    assert.equal(Buffer.from(ptx.image).toString('latin1'), '// fake ptx for compute_86\n\0', 'PTX keeps its NUL');
    assert.notEqual(moduleLoad(ptx.image), 0n);
    // a GPU older than every architecture NVRTC supports
    process.env['FAKE_CUDA_CC'] = '70';
    process.env['FAKE_NVRTC_ARCHS'] = '75,80,90';
    assert.throws(() => compile(src, 'fill.cu', []), /cudaCompile: NVRTC supports architectures 75, 80, 90, none of them runs on sm_70/);
    process.env['FAKE_CUDA_CC'] = '90';
    assert.throws(
      () => compile('#error no', 'bad.cu', ['--fmad=false']),
      /cudaCompile: NVRTC failed to compile bad\.cu for sm_90: NVRTC_ERROR_COMPILATION\noptions: --fmad=false --gpu-architecture=sm_90\nfake\.cu\(1\): error: this source asked for an error/,
    );
    assert.throws(() => compile(src, 'x.cu', ['-arch=sm_80']), /cudaCompile: options must not set the architecture \('-arch=sm_80'\)/);
    assert.throws(() => compile(src, 'x.cu', [1 as unknown as string]), /cudaCompile: argument 'options' must be an array of strings/);
    assert.throws(() => moduleLoad(new Uint8Array([1, 2, 3, 4, 5])), /cudaModuleLoad: cuModuleLoadData failed: CUDA_ERROR_INVALID_IMAGE/);
  },

  launch() {
    const c = compile('extern "C" __global__ void fill(float* out, int n, float v) {}', 'fill.cu', []);
    const m = moduleLoad(c.image);
    const fill = getFunction(m, 'fill');
    assert.throws(() => getFunction(m, 'nope'), /cudaGetFunction: cuModuleGetFunction\(nope\) failed: CUDA_ERROR_NOT_FOUND \(named symbol not found\)/);
    const out = allocDevice('f32', 8);
    launch(fill, [3, 1, 1], [64, 1, 1], 0, packArgs(['ptr', 'i32', 'f32'], [out, 5, 2.5]));
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(out)), [2.5, 2.5, 2.5, 2.5, 2.5, 3, 64, 0]);
    // an args view at an odd byte offset of a larger buffer is read correctly
    const big = new Uint8Array(24 + 3);
    big.set(new Uint8Array(packArgs(['ptr', 'i32', 'f32'], [out, 2, -1])), 3);
    launch(fill, [1, 1, 1], [32, 1, 1], 64 * 1024, new Uint8Array(big.buffer, 3, 24));
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(out)).slice(0, 5), [-1, -1, 1, 32, 65536]);
    assert.throws(() => launch(fill, [1, 1, 1], [32, 1, 1], 0, packArgs(['ptr', 'i32'], [out, 1])), /cudaLaunch: the kernel takes 3 parameters, 'args' packs 2/);
    assert.throws(() => launch(fill, [1, 1, 1], [32, 1, 1], 0, new ArrayBuffer(12)), /cudaLaunch: argument 'args' must hold whole 8-byte slots, got 12 bytes/);
    assert.throws(() => launch(fill, [0, 1, 1], [32, 1, 1], 0, new ArrayBuffer(24)), /cudaLaunch: argument 'grid' must hold integers in \[1, 2\^31-1\]/);
    assert.throws(() => launch(fill, [1, 1], [32, 1, 1], 0, new ArrayBuffer(24)), /cudaLaunch: argument 'grid' must be an array of 3 integers/);
    const wide = getFunction(m, 'wide');
    assert.throws(() => launch(wide, [1, 1, 1], [1, 1, 1], 0, new ArrayBuffer(16)), /cudaLaunch: kernel parameter 0 is wider than 8 bytes/);
    freeDevice(out);
  },

  graph() {
    // the native graph entry points: capture records instead of running, launches replay with the
    // captured parameters, a copy during the capture invalidates it
    const b = nativeCudaBackend();
    assert.equal(b.graphSupport!(), '');
    const c = compile('extern "C" __global__ void fill(float* out, int n, float v) {}', 'fill.cu', []);
    const fill = getFunction(moduleLoad(c.image), 'fill');
    const out = toDevice(new Float32Array(8));
    b.graphBegin!();
    launch(fill, [2, 1, 1], [32, 1, 1], 0, packArgs(['ptr', 'i32', 'f32'], [out, 3, 7]));
    b.memset0(deviceView(out, 1, 1).handle, 4);
    const exec = b.graphEnd!();
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(out)), [0, 0, 0, 0, 0, 0, 0, 0], 'nothing ran while capturing');
    b.graphLaunch!(exec);
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(out)), [7, 0, 7, 2, 32, 0, 0, 0]);
    uploadDevice(out, new Float32Array(8));
    b.graphLaunch!(exec);
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(out)), [7, 0, 7, 2, 32, 0, 0, 0], 'a replay runs again');
    b.graphDestroy!(exec);
    b.graphBegin!();
    assert.throws(() => b.upload(out.handle, new Float32Array(1), 0), /cudaUpload: cuMemcpyHtoDAsync_v2 failed/);
    assert.throws(() => b.graphEnd!(), /cudaGraphEnd: cuStreamEndCapture failed/);
    assert.throws(() => b.graphLaunch!(0n), /cudaGraphLaunch/);
    freeDevice(out);
  },

  pinned() {
    // page-locked staging comes from cuMemHostAlloc (the stand-in's free memory drops by one per
    // live allocation), is writable, and uploads from it arrive
    const free0 = nativeCudaBackend().memInfo().free;
    const staging = allocHostStaging(5);
    assert.equal(staging.length, 5);
    assert.equal(nativeCudaBackend().memInfo().free, free0 - 1, 'cuMemHostAlloc gave the memory');
    staging.set([1, 2, 3, 4, 5]);
    const d = allocDevice('f32', 5);
    uploadDevice(d, staging);
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(d)), [1, 2, 3, 4, 5]);
    freeDevice(d);
    assert.equal(allocHostStaging(0).length, 0);
  },

  'no-graphs'() {
    assert.equal(probe().available, true);
    const why = /^CUDA driver library libcuda\.so\.1 lacks cuStreamBeginCapture_v2, .*cuGraphDestroy \(driver older than 11\.4\?\)$/;
    assert.match(nativeCudaBackend().graphSupport!(), why);
    assert.throws(() => nativeCudaBackend().graphBegin!(), /cudaGraphBegin: CUDA graphs unavailable: CUDA driver library/);
    const graphs = new CudaStepGraphs('a test step');
    assert.match(graphs.eagerReason!, why);
    let runs = 0;
    for (let i = 0; i < 3; i++) graphs.run('k', () => runs++);
    assert.equal(runs, 3, 'every run is eager');
    assert.equal(graphs.graphs, 0);
  },

  gemm() {
    const rng = new Rng(5);
    const U = 2 ** -24;
    for (const [M, N, K] of [[3, 5, 7], [17, 1, 33], [1, 65, 3], [8, 8, 8]] as const) {
      for (const transA of [false, true]) {
        for (const transB of [false, true]) {
          for (const type of ['f32', 'bf16'] as const) {
            const a = Tensor.zeros(transA ? [K, M] : [M, K]), b = Tensor.zeros(transB ? [N, K] : [K, N]), out = Tensor.zeros([M, N]);
            for (const t of [a, b, out]) {
              rng.fillNormal(t.f32);
              if (type === 'bf16') t.f32.set(t.f32.map((x) => bf16ToF32Ref(f32ToBf16Ref(x))));
            }
            const alpha = 0.75, beta = -0.5;
            const twin = out.clone();
            matmulRef(twin, a, b, { transA, transB, alpha, beta });
            const up = (t: Tensor) => (type === 'f32' ? toDevice(t.f32) : toDevice(Uint16Array.from(t.f32, (x) => f32ToBf16Ref(x)), 'bf16'));
            // operands at 4-byte offsets: cuBLASLt must be told the real alignment
            const pa = allocDevice(type, a.size + 1), pb = allocDevice(type, b.size + 1), pc = allocDevice('f32', out.size + 1);
            const da = deviceView(pa, 1, a.size), db = deviceView(pb, 1, b.size), dc = deviceView(pc, 1, out.size);
            const ua = up(a), ub = up(b);
            uploadDevice(da, downloadDevice(ua));
            uploadDevice(db, downloadDevice(ub));
            uploadDevice(dc, out.f32);
            matmulCuda(dc, da, db, M, N, K, { transA, transB, alpha, beta });
            const got = downloadDevice<Float32Array>(dc);
            // a few f32 roundings of the magnitudes involved; a misplaced operand is off by O(1)
            const mag = Tensor.fromF32(out.f32.map(Math.abs), out.shape);
            const abs = (t: Tensor) => Tensor.fromF32(t.f32.map(Math.abs), t.shape);
            matmulRef(mag, abs(a), abs(b), { transA, transB, alpha: Math.abs(alpha), beta: Math.abs(beta) });
            for (let i = 0; i < got.length; i++) {
              const tol = 4 * U * mag.f32[i]!;
              assert.ok(Math.abs(got[i]! - twin.f32[i]!) <= tol, `${type} M=${M} N=${N} K=${K} tA=${transA} tB=${transB} [${i}]: ${got[i]} vs ${twin.f32[i]}`);
            }
            for (const d of [pa, pb, pc, ua, ub]) freeDevice(d);
          }
        }
      }
    }
    // the native layer checks leading dimensions and ranges before calling cuBLASLt
    const x = allocDevice('f32', 6);
    assert.throws(() => cudaGemm(0, 0, 2, 3, 1, 1, x.handle, 1, x.handle, 1, 0, x.handle, 2, 'f32', 'f32'), /cudaGemm: argument 'lda' must be >= 2/);
    assert.throws(() => cudaGemm(0, 0, 3, 3, 1, 1, x.handle, 3, x.handle, 1, 0, x.handle, 3, 'f32', 'f32'), /cudaGemm: argument 'C': device range .* is not inside a live allocation/);
    assert.throws(() => cudaGemm(0, 0, 1, 1, 1, 1, x.handle, 1, x.handle, 1, 0, x.handle, 1, 'f32', 'bf16'), /cudaGemm: f32 inputs need an f32 output/);
    // a strided batch: three 2×3 products C_i = A_i B_i with A_i (2×4), B_i (4×3), column-major
    {
      const A = new Float32Array(3 * 8).map((_, i) => (i % 7) - 3), B = new Float32Array(3 * 12).map((_, i) => (i % 5) - 2);
      const dA = toDevice(A), dB = toDevice(B), dC = toDevice(new Float32Array(3 * 6).fill(1));
      nativeCudaBackend().gemm({ opA: 0, opB: 0, m: 2, n: 3, k: 4, alpha: 1, A: dA.handle, lda: 2, B: dB.handle, ldb: 4, beta: 0.5, C: dC.handle, ldc: 2, abType: 'f32', cType: 'f32', batch: { count: 3, strideA: 8, strideB: 12, strideC: 6 } });
      const got = downloadDevice<Float32Array>(dC);
      for (let b = 0; b < 3; b++) {
        for (let j = 0; j < 3; j++) {
          for (let i = 0; i < 2; i++) {
            let s = 0;
            for (let l = 0; l < 4; l++) s += A[b * 8 + i + l * 2]! * B[b * 12 + l + j * 4]!;
            assert.equal(got[b * 6 + i + j * 2], s + 0.5, `batch ${b} C(${i}, ${j})`);
          }
        }
      }
      assert.throws(() => cudaGemm(0, 0, 2, 3, 4, 1, dA.handle, 2, dB.handle, 4, 0, dC.handle, 2, 'f32', 'f32', 3, 8, 12, 0), /cudaGemm: argument 'strideC' must be >= 1 for a batch/);
      assert.throws(() => cudaGemm(0, 0, 2, 3, 4, 1, dA.handle, 2, dB.handle, 4, 0, dC.handle, 2, 'f32', 'f32', 4, 8, 12, 6), /cudaGemm: argument 'A': device range .* is not inside a live allocation/);
      for (const d of [dA, dB, dC]) freeDevice(d);
    }
    assert.throws(() => cudaGemm(2, 0, 1, 1, 1, 1, x.handle, 1, x.handle, 1, 0, x.handle, 1, 'f32', 'f32'), /cudaGemm: arguments 'opA' and 'opB' must be 0 \(N\) or 1 \(T\)/);
    assert.throws(() => cudaGemm(0, 0, 1, 1, 1, 1, x.handle, 1, x.handle, 1, 0, x.handle, 1, 'f16', 'f32'), /cudaGemm: argument 'abType' must be 'f32' or 'bf16'/);
    freeDevice(x);
  },

  'real-nvrtc'() {
    // A real NVRTC behind the stand-in driver (a compute capability 9.0 device): every kernel
    // file compiles (its includes expanded) with the production options to an sm_90 CUBIN holding its
    // kernels, and a device newer than NVRTC gets PTX for the newest architecture it knows.
    const p = probe();
    assert.equal(p.available, true, p.reason);
    assert.ok(p.nvrtcArchs.includes(90), `NVRTC ${p.nvrtcVersion} supports sm_90: ${p.nvrtcArchs}`);
    const dir = kernelSourceDir();
    for (const file of readdirSync(dir).filter((f) => f.endsWith('.cu'))) {
      const source = kernelSource(file, dir); // its #include lines expanded, as the loader compiles it
      const c = compile(source, file, [...KERNEL_OPTIONS]);
      assert.equal(c.kind, 'cubin', file);
      assert.equal(c.arch, 'sm_90', file);
      assert.doesNotMatch(c.log, /warning|error/i, `${file}: ${c.log}`);
      const image = Buffer.from(c.image);
      assert.equal(image.subarray(0, 4).toString('latin1'), '\x7fELF', file);
      assert.ok(!image.includes('fake cubin'), `${file}: a real CUBIN`);
      for (const name of parseKernelSignatures(source).keys()) assert.ok(image.includes(name), `${file}: CUBIN holds ${name}`);
    }
    const newest = Math.max(...p.nvrtcArchs);
    process.env['FAKE_CUDA_CC'] = String(Math.floor(newest / 10) * 10 + 10 + 9); // a major version beyond NVRTC
    const src = kernelSource('elementwise.cu', dir);
    const ptx = compile(src, 'elementwise.cu', [...KERNEL_OPTIONS]);
    assert.equal(ptx.kind, 'ptx');
    assert.equal(ptx.arch, `compute_${newest}`);
    const text = Buffer.from(ptx.image).toString('latin1');
    assert.ok(text.endsWith('\0') && text.includes('.entry eqat_scale'), 'PTX text with its NUL');
    process.env['FAKE_CUDA_CC'] = '90';
    // the TypeScript path: compile, cache, load, launch (the stand-in driver runs it as a no-op)
    process.env['EQAT_CACHE_DIR'] = mkdtempSync(join(tmpdir(), 'eqat-real-nvrtc-cache-'));
    const x = toDevice(new Float32Array([1, 2, 3]));
    scaleCuda(x, x, 2);
    freeDevice(x);
    rmSync(process.env['EQAT_CACHE_DIR'], { recursive: true, force: true });
  },

  'ts-stack'() {
    // The TypeScript kernel path on the native backend: compile through (fake) NVRTC, cache on
    // disk under EQAT_CACHE_DIR, load, launch (the fake runs eqat_* kernels as no-ops).
    const cache = mkdtempSync(join(tmpdir(), 'eqat-fake-cache-'));
    process.env['EQAT_CACHE_DIR'] = cache;
    const x = toDevice(new Float32Array([1, 2, 3]));
    scaleCuda(x, x, 2);
    assert.deepEqual(readdirSync(join(cache, 'cuda')).map((f) => f.replace(/^[0-9a-f]{40}/, 'H')), ['H-sm90-drv13000-nvrtc13.0.bin']);
    assert.equal(nativeCudaBackend().name, 'native');
    freeDevice(x);
    rmSync(cache, { recursive: true, force: true });
  },
};

// Kernel images the stand-ins compile must never reach the user's cache (~/.cache/eqat or an
// inherited EQAT_CACHE_DIR): a fake CUBIN there has the key a real GPU with the same driver and
// NVRTC versions would look up. Scenarios that inspect the cache set their own directory.
process.env['EQAT_CACHE_DIR'] = mkdtempSync(join(tmpdir(), 'eqat-fake-child-cache-'));
const childCache = process.env['EQAT_CACHE_DIR'];
process.on('exit', () => rmSync(childCache, { recursive: true, force: true }));

const name = process.argv[2] ?? '';
const run = scenarios[name];
if (!run) {
  console.error(`unknown scenario '${name}' (${Object.keys(scenarios).join(', ')})`);
  process.exit(2);
}
run();
console.log(`scenario ${name}: ok`);
