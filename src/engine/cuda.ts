// The CUDA backend, TypeScript side: device probing and selection, device arrays, the kernel
// argument packing, the on-disk kernel cache and kernel launches.
//
// Everything goes through a CudaBackend. The default one is the native addon
// (native/cuda/*.cc), which opens libcuda / NVRTC / cuBLASLt at run time, so nothing CUDA-related
// is needed to install or build eqat; without them probeCuda() reports why and every other call
// throws that reason. Tests may install another backend with setCudaBackend().
//
// Kernels live in native/cuda/kernels/<file>.cu (shipped with the package). An op wrapper
// (src/ops/cuda/<op>.ts) declares each kernel it launches once with cudaKernel(file, name,
// params); the first launch compiles the file with NVRTC for the device's architecture (or
// takes it from the disk cache), loads it and checks that the declared parameters match the
// kernel's signature in the source. Kernel parameters travel packed in 8-byte slots
// (packArgs): pointers as u64, int as i32, unsigned as u32, long long as i64, float as f32,
// double as f64, each little-endian at the start of its slot.
//
// Disk cache: $EQAT_CACHE_DIR/cuda or ~/.cache/eqat/cuda, one file per (source + options,
// compute capability, driver version, compiler version), written atomically (temporary file +
// rename); an unreadable, truncated or corrupt entry is compiled again and replaced.
import { createHash, randomBytes } from 'node:crypto';
import { mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { BYTES_PER_ELEMENT, type DType, type Storage } from './dtype.js';
import { nativeFn, packageRoot } from './native.js';

// ---------------------------------------------------------------- backend interface

export interface CudaDeviceInfo {
  index: number;
  name: string;
  computeCapability: [number, number];
  /** Bytes of device memory. */
  totalMemory: number;
  multiprocessors?: number;
}

/** What cudaProbe() reports. `reason` is set exactly when `available` is false. */
export interface CudaProbe {
  available: boolean;
  reason?: string;
  driverVersion: number | null;
  devices: CudaDeviceInfo[];
  /** Ordinal of the device kernels run on (EQAT_CUDA_DEVICE, default 0), when available. */
  device: number | null;
  /** "major.minor" of the NVRTC library, or null when it is not loaded. */
  nvrtcVersion: string | null;
  /** Architectures NVRTC can compile for (e.g. 75, 80, 86, 89, 90, ...). */
  nvrtcArchs: number[];
  cublasLt: boolean;
  cublasLtVersion: number | null;
  /** Paths of the opened libraries. */
  libraries: { driver?: string | null; nvrtc?: string | null; cublasLt?: string | null };
  /** Why a library is not loaded. */
  errors: { driver?: string; nvrtc?: string; cublasLt?: string };
}

/** A compiled kernel file: CUBIN for the device's architecture, or PTX the driver JIT-compiles. */
export interface CompiledKernelImage {
  image: Uint8Array;
  kind: 'cubin' | 'ptx';
  /** e.g. 'sm_90' (CUBIN) or 'compute_90' (PTX). */
  arch: string;
  log: string;
}

export type Dim3 = readonly [number, number, number];

/**
 * One column-major GEMM with BLAS semantics (see native/cuda/cublaslt.cc):
 * C (m, n) = alpha * op(A) @ op(B) + beta * C, op = 0 (N) or 1 (T), leading dimensions in
 * elements, f32 accumulation.
 */
export interface GemmArgs {
  opA: 0 | 1;
  opB: 0 | 1;
  m: number;
  n: number;
  k: number;
  alpha: number;
  A: bigint;
  lda: number;
  B: bigint;
  ldb: number;
  beta: number;
  C: bigint;
  ldc: number;
  abType: 'f32' | 'bf16';
  cType: 'f32' | 'bf16';
  /** Strided batch: `count` products, the i-th at A + i·strideA, B + i·strideB, C + i·strideC (elements). */
  batch?: { count: number; strideA: number; strideB: number; strideC: number };
}

/** The operations the CUDA backend needs; handles are device addresses / driver handles. */
export interface CudaBackend {
  readonly name: string;
  probe(): CudaProbe;
  alloc(bytes: number): bigint;
  free(handle: bigint): void;
  /** Page-locked host memory (optional): an ArrayBuffer released when it is garbage-collected, or null when unavailable. */
  hostAlloc?(bytes: number): ArrayBuffer | null;
  upload(handle: bigint, src: ArrayBufferView, byteOffset: number): void;
  /** Waits for queued work, then copies into dst. */
  download(handle: bigint, dst: ArrayBufferView, byteOffset: number): void;
  memset0(handle: bigint, bytes: number): void;
  synchronize(): void;
  /** Free and total bytes of device memory (all processes' allocations, the context included). */
  memInfo(): { free: number; total: number };
  compile(source: string, name: string, options: readonly string[]): CompiledKernelImage;
  moduleLoad(image: Uint8Array): bigint;
  getFunction(module: bigint, name: string): bigint;
  launch(fn: bigint, grid: Dim3, block: Dim3, sharedBytes: number, args: ArrayBuffer): void;
  gemm(args: GemmArgs): void;
  /** CUDA graphs (optional; see CudaStepGraphs): '' when this backend can capture and replay, else why not. */
  graphSupport?(): string;
  /** Starts capturing queued work into a graph instead of running it. */
  graphBegin?(): void;
  /** Ends the capture and returns the instantiated graph; throws when the capture was invalidated. */
  graphEnd?(): bigint;
  /** Queues a whole instantiated graph. */
  graphLaunch?(exec: bigint): void;
  graphDestroy?(exec: bigint): void;
}

type Fn<A extends unknown[], R = void> = (...args: A) => R;

/** The native addon's entry points (native/cuda/device.cc, cublaslt.cc). */
export function nativeCudaBackend(): CudaBackend {
  return {
    name: 'native',
    probe: () => nativeFn<Fn<[], CudaProbe>>('cudaProbe')(),
    alloc: (bytes) => nativeFn<Fn<[number], bigint>>('cudaAlloc')(bytes),
    free: (h) => nativeFn<Fn<[bigint]>>('cudaFree')(h),
    hostAlloc: (bytes) => nativeFn<Fn<[number], ArrayBuffer | null>>('cudaHostAlloc')(bytes),
    upload: (h, src, off) => nativeFn<Fn<[bigint, ArrayBufferView, number]>>('cudaUpload')(h, src, off),
    download: (h, dst, off) => nativeFn<Fn<[bigint, ArrayBufferView, number]>>('cudaDownload')(h, dst, off),
    memset0: (h, bytes) => nativeFn<Fn<[bigint, number]>>('cudaMemset0')(h, bytes),
    synchronize: () => nativeFn<Fn<[]>>('cudaSynchronize')(),
    memInfo: () => nativeFn<Fn<[], { free: number; total: number }>>('cudaMemInfo')(),
    compile: (source, name, options) =>
      nativeFn<Fn<[string, string, string[]], CompiledKernelImage>>('cudaCompile')(source, name, [...options]),
    moduleLoad: (image) => nativeFn<Fn<[Uint8Array], bigint>>('cudaModuleLoad')(image),
    getFunction: (module, name) => nativeFn<Fn<[bigint, string], bigint>>('cudaGetFunction')(module, name),
    launch: (fn, grid, block, shared, args) =>
      nativeFn<Fn<[bigint, number[], number[], number, ArrayBuffer]>>('cudaLaunch')(fn, [...grid], [...block], shared, args),
    gemm: (g) => {
      const args = [g.opA, g.opB, g.m, g.n, g.k, g.alpha, g.A, g.lda, g.B, g.ldb, g.beta, g.C, g.ldc, g.abType, g.cType];
      const batch = g.batch ? [g.batch.count, g.batch.strideA, g.batch.strideB, g.batch.strideC] : [];
      nativeFn<(...a: unknown[]) => void>('cudaGemm')(...args, ...batch);
    },
    graphSupport: () => nativeFn<Fn<[], string>>('cudaGraphSupport')(),
    graphBegin: () => nativeFn<Fn<[]>>('cudaGraphBegin')(),
    graphEnd: () => nativeFn<Fn<[], bigint>>('cudaGraphEnd')(),
    graphLaunch: (exec) => nativeFn<Fn<[bigint]>>('cudaGraphLaunch')(exec),
    graphDestroy: (exec) => nativeFn<Fn<[bigint]>>('cudaGraphDestroy')(exec),
  };
}

let backendInUse: CudaBackend | undefined;
let probeMemo: CudaProbe | undefined;
const modules = new Map<string, bigint>(); // kernel file -> loaded module
const functions = new Map<string, bigint>(); // file:name -> function handle

/** The backend in use (the native addon unless a test installed another). */
export function cudaBackend(): CudaBackend {
  backendInUse ??= nativeCudaBackend();
  return backendInUse;
}

/**
 * Installs a backend (tests: an emulator or a fake), or restores the native one with null.
 * Forgets the memoised probe and every loaded kernel.
 */
export function setCudaBackend(backend: CudaBackend | null): void {
  backendInUse = backend ?? undefined;
  probeMemo = undefined;
  modules.clear();
  functions.clear();
}

function unavailableProbe(reason: string): CudaProbe {
  return {
    available: false,
    reason,
    driverVersion: null,
    devices: [],
    device: null,
    nvrtcVersion: null,
    nvrtcArchs: [],
    cublasLt: false,
    cublasLtVersion: null,
    libraries: {},
    errors: {},
  };
}

/**
 * What CUDA this process can use; never throws (a missing or stale native addon is reported
 * as the reason). Memoised; `refresh` probes again (EQAT_CUDA_DISABLE is read each time).
 */
export function probeCuda({ refresh = false }: { refresh?: boolean } = {}): CudaProbe {
  if (probeMemo && !refresh) return probeMemo;
  let p: CudaProbe;
  try {
    p = cudaBackend().probe();
  } catch (e) {
    p = unavailableProbe(`cannot probe CUDA: ${(e as Error).message}`);
  }
  if (!p.available && !p.reason) p = { ...p, reason: 'unknown reason' };
  probeMemo = p;
  return p;
}

/** The device kernels run on; throws an Error with the probe's reason when CUDA is unavailable. */
export function cudaDevice(): { probe: CudaProbe; device: CudaDeviceInfo } {
  const probe = probeCuda();
  if (!probe.available) throw new Error(`CUDA is not available: ${probe.reason}`);
  const device = probe.devices.find((d) => d.index === probe.device) ?? probe.devices[0];
  if (!device) throw new Error('CUDA is not available: the probe lists no device');
  return { probe, device };
}

// ---------------------------------------------------------------- device selection

export type DeviceFlag = 'cpu' | 'cuda' | 'auto';
export const DEVICE_FLAGS: readonly DeviceFlag[] = ['cpu', 'cuda', 'auto'];

/**
 * 'cpu' -> 'cpu'; 'cuda' -> 'cuda' when available, else an Error with the probe's reason;
 * 'auto' -> 'cuda' when available, else 'cpu'.
 */
export function resolveDevice(flag: DeviceFlag, probe: () => CudaProbe = probeCuda): 'cpu' | 'cuda' {
  switch (flag) {
    case 'cpu':
      return 'cpu';
    case 'cuda': {
      const p = probe();
      if (!p.available) throw new Error(`--device cuda: CUDA is not available: ${p.reason}`);
      return 'cuda';
    }
    case 'auto':
      return probe().available ? 'cuda' : 'cpu';
    default:
      throw new RangeError(`resolveDevice: device must be one of ${DEVICE_FLAGS.join(', ')}, got '${String(flag)}'`);
  }
}

/** The device a command runs on, given its --device flag; errors name the command. */
export function deviceForCommand(command: string, flag: DeviceFlag, probe: () => CudaProbe = probeCuda): 'cpu' | 'cuda' {
  try {
    return resolveDevice(flag, probe);
  } catch (e) {
    throw new Error(`${command} ${(e as Error).message}`);
  }
}

/** Why --precision bf16 is refused on the CPU (the flag or recipe key goes before it). */
export const BF16_NEEDS_CUDA = 'bf16 needs --device cuda (the CPU computes in f32)';

// ---------------------------------------------------------------- device arrays

/** A typed range of device memory: `length` elements of `dtype` at device address `handle`. */
export interface DeviceArray {
  readonly handle: bigint;
  readonly dtype: DType;
  readonly length: number;
  readonly bytes: number;
  /** True for an allocation (free it with freeDevice), false for a view into one. */
  readonly owner: boolean;
}

function checkLength(op: string, length: number): void {
  if (!Number.isSafeInteger(length) || length < 0) throw new RangeError(`${op}: length must be an integer >= 0, got ${length}`);
}

const allocStats = { liveBytes: 0, peakBytes: 0 };
let budget: { bytes: number; what: string } | null = null;

/**
 * Caps the bytes allocDevice may hold at once (null: no cap). `what` names the setting in the
 * error, e.g. '--max-gpu-memory 6'. The pipelines allocate their device state before they
 * start, so a run that does not fit stops before any work.
 */
export function setDeviceMemoryBudget(bytes: number | null, what = 'the device memory budget'): void {
  if (bytes !== null && !(bytes >= 0)) throw new RangeError(`setDeviceMemoryBudget: bytes must be >= 0, got ${bytes}`);
  budget = bytes === null ? null : { bytes, what };
}

/** Bytes held by allocDevice allocations now and at most so far (the CUDA context and cuBLASLt's workspace are extra). */
export function deviceAllocStats(): { liveBytes: number; peakBytes: number } {
  return { ...allocStats };
}

/** Restarts the peak at the current live bytes (benchmarks measure one phase at a time). */
export function resetDevicePeak(): void {
  allocStats.peakBytes = allocStats.liveBytes;
}

/** Allocates `length` elements of `dtype` (uninitialised; length 0 allocates nothing). */
export function allocDevice(dtype: DType, length: number): DeviceArray {
  checkLength('allocDevice', length);
  refuseWhileCapturing('allocDevice');
  const bytes = length * BYTES_PER_ELEMENT[dtype];
  if (budget && allocStats.liveBytes + bytes > budget.bytes) {
    const mib = (b: number) => (b / 2 ** 20).toFixed(1);
    throw new Error(
      `${budget.what}: allocating ${mib(bytes)} MiB more on the GPU (${mib(allocStats.liveBytes)} MiB held) would exceed ${mib(budget.bytes)} MiB; ` +
        'raise the budget, or use a smaller batch / sequence length',
    );
  }
  const handle = bytes === 0 ? 0n : cudaBackend().alloc(bytes);
  allocStats.liveBytes += bytes;
  allocStats.peakBytes = Math.max(allocStats.peakBytes, allocStats.liveBytes);
  return { handle, dtype, length, bytes, owner: true };
}

/** Frees an allocation from allocDevice / toDevice (views cannot be freed). */
export function freeDevice(a: DeviceArray): void {
  if (!a.owner) throw new Error('freeDevice: argument is a view, not an allocation');
  refuseWhileCapturing('freeDevice');
  if (a.handle !== 0n) cudaBackend().free(a.handle);
  allocStats.liveBytes -= a.bytes;
}

/** Elements [offset, offset + length) of a, sharing its memory. */
export function deviceView(a: DeviceArray, offset: number, length: number): DeviceArray {
  checkLength('deviceView', length);
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + length > a.length) {
    throw new RangeError(`deviceView: range [${offset}, ${offset + length}) is outside the array of ${a.length} elements`);
  }
  const bpe = BYTES_PER_ELEMENT[a.dtype];
  return { handle: a.handle + BigInt(offset * bpe), dtype: a.dtype, length, bytes: length * bpe, owner: false };
}

function dtypeOfStorage(data: Storage): DType {
  if (data instanceof Float32Array) return 'f32';
  if (data instanceof Int32Array) return 'i32';
  if (data instanceof Uint8Array) return 'u8';
  throw new TypeError('toDevice: a Uint16Array needs an explicit dtype (bf16 or f16)');
}

function checkHostMatches(op: string, a: DeviceArray, data: Storage, offset: number): void {
  const want = storageCtor(a.dtype);
  if (!(data instanceof want)) throw new TypeError(`${op}: a ${a.dtype} device array needs a ${want.name}`);
  if (!Number.isSafeInteger(offset) || offset < 0 || offset + data.length > a.length) {
    throw new RangeError(`${op}: ${data.length} elements at offset ${offset} do not fit the device array of ${a.length}`);
  }
}

type StorageCtor = (new (n: number) => Storage) & { readonly name: string };

/** The typed-array class holding `dtype` on the host. */
function storageCtor(dtype: DType): StorageCtor {
  switch (dtype) {
    case 'f32':
      return Float32Array;
    case 'i32':
      return Int32Array;
    case 'u8':
      return Uint8Array;
    case 'f16':
    case 'bf16':
      return Uint16Array;
  }
}

/** Copies host data to a new device array (dtype from the typed array; Uint16Array needs one). */
export function toDevice(data: Storage, dtype: DType = dtypeOfStorage(data)): DeviceArray {
  const want = storageCtor(dtype);
  if (!(data instanceof want)) throw new TypeError(`toDevice: a ${dtype} device array needs a ${want.name}`);
  const a = allocDevice(dtype, data.length);
  try {
    uploadDevice(a, data);
  } catch (e) {
    freeDevice(a);
    throw e;
  }
  return a;
}

/**
 * Device memory that lives and dies together (a trainer's state, a test's arrays): everything
 * allocated, uploaded or adopted here is released by one free(), newest first. An owner makes
 * its device state through one of these in its constructor and frees it if the constructor
 * fails half way, so nothing leaks either way.
 */
export class DeviceAllocations {
  private readonly releases: (() => void)[] = [];

  /** allocDevice, released by free(). */
  alloc(dtype: DType, length: number): DeviceArray {
    return this.adopt(allocDevice(dtype, length));
  }

  /** toDevice (a Uint16Array needs its dtype, bf16 or f16), released by free(). */
  upload(data: Storage, dtype?: DType): DeviceArray {
    return this.adopt(toDevice(data, dtype));
  }

  /** Takes over an allocation, or anything with a free() of its own. */
  adopt<T extends DeviceArray | { free(): void }>(owned: T): T {
    if ('handle' in owned) this.releases.push(() => freeDevice(owned));
    else this.releases.push(() => owned.free());
    return owned;
  }

  free(): void {
    for (const release of this.releases.splice(0).reverse()) release();
  }
}

/**
 * Host memory for data on its way to the device, e.g. a training batch: page-locked where the
 * backend can give it (copies from it run at full bus speed, without a staging copy), else an
 * ordinary array. Page-locked memory is released when the array is garbage-collected.
 */
export function allocHostStaging(length: number): Float32Array {
  checkLength('allocHostStaging', length);
  refuseWhileCapturing('allocHostStaging');
  const pinned = length > 0 ? (cudaBackend().hostAlloc?.(length * 4) ?? null) : null;
  return pinned ? new Float32Array(pinned) : new Float32Array(length);
}

/** Copies data into a starting at element `offset`. */
export function uploadDevice(a: DeviceArray, data: Storage, offset = 0): void {
  checkHostMatches('uploadDevice', a, data, offset);
  refuseWhileCapturing('uploadDevice');
  if (data.length === 0) return;
  cudaBackend().upload(a.handle, data, offset * BYTES_PER_ELEMENT[a.dtype]);
}

/** Waits for queued work and copies a (or `into.length` elements from `offset`) to the host. */
export function downloadDevice<T extends Storage>(a: DeviceArray, into?: T, offset = 0): T {
  const dst = into ?? (new (storageCtor(a.dtype))(a.length) as T);
  checkHostMatches('downloadDevice', a, dst, offset);
  refuseWhileCapturing('downloadDevice');
  if (dst.length === 0) cudaBackend().synchronize();
  else cudaBackend().download(a.handle, dst, offset * BYTES_PER_ELEMENT[a.dtype]);
  return dst;
}

/** Zeroes every byte of a. */
export function zeroDevice(a: DeviceArray): void {
  if (a.bytes > 0) cudaBackend().memset0(a.handle, a.bytes);
}

/** Free and total bytes of the device's memory, as the driver reports them. */
export function deviceMemInfo(): { free: number; total: number } {
  return cudaBackend().memInfo();
}

/** Waits until all queued work has finished (and reports asynchronous errors). */
export function synchronizeCuda(): void {
  refuseWhileCapturing('synchronizeCuda');
  cudaBackend().synchronize();
}

/** True when the byte ranges of a and b intersect. */
export function deviceOverlaps(a: DeviceArray, b: DeviceArray): boolean {
  if (a.bytes === 0 || b.bytes === 0) return false;
  return a.handle < b.handle + BigInt(b.bytes) && b.handle < a.handle + BigInt(a.bytes);
}

/** Throws a RangeError naming the first two of `named` that share storage (`op` names the op). */
export function expectDisjoint(op: string, named: readonly (readonly [string, DeviceArray])[]): void {
  for (let i = 0; i < named.length; i++) {
    for (let j = i + 1; j < named.length; j++) {
      if (deviceOverlaps(named[i]![1], named[j]![1])) {
        throw new RangeError(`${op}: arguments '${named[i]![0]}' and '${named[j]![0]}' share storage`);
      }
    }
  }
}

/** Throws a TypeError unless a holds `dtype`; `what` names the op and argument. */
export function expectDeviceDtype(a: DeviceArray, dtype: DType, what: string): void {
  if (a.dtype !== dtype) throw new TypeError(`${what}: expected a ${dtype} device array, got ${a.dtype}`);
}

/** Throws a RangeError unless a has `length` elements; `shape` describes them. */
export function expectDeviceLength(a: DeviceArray, length: number, what: string, shape = ''): void {
  if (a.length !== length) {
    throw new RangeError(`${what}: expected ${length} elements${shape ? ` ${shape}` : ''}, got ${a.length}`);
  }
}

/**
 * Throws a RangeError unless v is an integer in [min, 2^31) (a size a kernel takes as a 32-bit
 * int); `what` names the op and argument, e.g. "rmsnormForwardCuda: C".
 */
export function expectKernelInt(v: number, min: 0 | 1, what: string): void {
  if (!Number.isInteger(v) || v < min || v > 2 ** 31 - 1) throw new RangeError(`${what} must be an integer in [${min}, 2^31), got ${v}`);
}

// ---------------------------------------------------------------- kernel arguments

/** How one kernel parameter is passed (see the file header). */
export type ArgKind = 'ptr' | 'i32' | 'u32' | 'i64' | 'u64' | 'f32' | 'f64';
export type KernelArg = DeviceArray | bigint | number;

const INT_RANGE: Record<'i32' | 'u32' | 'i64' | 'u64', [bigint, bigint]> = {
  i32: [-(2n ** 31n), 2n ** 31n - 1n],
  u32: [0n, 2n ** 32n - 1n],
  i64: [-(2n ** 63n), 2n ** 63n - 1n],
  u64: [0n, 2n ** 64n - 1n],
};

/**
 * Packs kernel arguments into 8-byte slots, one per parameter: a DeviceArray or BigInt for
 * 'ptr', integers (number or BigInt, range-checked) for i32/u32/i64/u64, numbers for f32/f64.
 * `what` names the caller in errors.
 */
export function packArgs(params: readonly ArgKind[], values: readonly KernelArg[], what = 'packArgs'): ArrayBuffer {
  if (values.length !== params.length) {
    throw new RangeError(`${what}: the kernel takes ${params.length} arguments, got ${values.length}`);
  }
  const buf = new ArrayBuffer(8 * params.length);
  const view = new DataView(buf);
  params.forEach((kind, i) => {
    const v = values[i];
    const at = 8 * i;
    const bad = (want: string): never => {
      throw new TypeError(`${what}: argument ${i} (${kind}) must be ${want}, got ${typeof v === 'object' ? 'a DeviceArray' : String(v)}`);
    };
    switch (kind) {
      case 'ptr': {
        const h = typeof v === 'bigint' ? v : typeof v === 'object' && v !== null ? v.handle : bad('a DeviceArray or BigInt address');
        if (h < 0n || h >= 2n ** 64n) bad('a 64-bit address');
        view.setBigUint64(at, h, true);
        break;
      }
      case 'f32':
      case 'f64':
        if (typeof v !== 'number') bad('a number');
        if (kind === 'f32') view.setFloat32(at, v as number, true);
        else view.setFloat64(at, v as number, true);
        break;
      default: {
        let b: bigint;
        if (typeof v === 'bigint') b = v;
        else if (typeof v === 'number' && Number.isSafeInteger(v)) b = BigInt(v);
        else b = bad('an integer');
        const [lo, hi] = INT_RANGE[kind];
        if (b < lo || b > hi) bad(`in [${lo}, ${hi}]`);
        if (kind === 'i32') view.setInt32(at, Number(b), true);
        else if (kind === 'u32') view.setUint32(at, Number(b), true);
        else if (kind === 'i64') view.setBigInt64(at, b, true);
        else view.setBigUint64(at, b, true);
      }
    }
  });
  return buf;
}

// ---------------------------------------------------------------- kernel sources and signatures

/** A kernel an op launches: its .cu file (in native/cuda/kernels), name and parameter kinds. */
export interface KernelSpec {
  readonly file: string;
  readonly name: string;
  readonly params: readonly ArgKind[];
}

const registry: KernelSpec[] = [];

/** Declares a kernel (once, at module load of its op wrapper); nothing is compiled yet. */
export function cudaKernel(file: string, name: string, params: readonly ArgKind[]): KernelSpec {
  const spec: KernelSpec = Object.freeze({ file, name, params: Object.freeze([...params]) });
  registry.push(spec);
  return spec;
}

/** Every kernel declared so far (by the op wrappers that have been imported). */
export function registeredKernels(): readonly KernelSpec[] {
  return registry;
}

/** The directory of the .cu sources. */
export function kernelSourceDir(): string {
  return join(packageRoot(), 'native', 'cuda', 'kernels');
}

const INCLUDE_LINE = /^[ \t]*#[ \t]*include[ \t]*(["<])([^">]*)[">][ \t]*(?:\/\/.*)?$/;

/**
 * The text of kernel file `file` as NVRTC compiles it: each `#include "name"` line replaced by
 * the (likewise expanded) text of native/cuda/kernels/name, once per file (later includes of
 * the same file become empty, as an include guard would make them). Only plain names from the
 * kernel directory may be included: NVRTC gets no include paths and kernels use no headers.
 */
export function kernelSource(file: string, dir = kernelSourceDir()): string {
  const seen = new Set<string>();
  const expand = (name: string, chain: readonly string[]): string => {
    const text = readFileSync(join(dir, name), 'utf8');
    return text
      .split('\n')
      .map((line, i) => {
        const m = INCLUDE_LINE.exec(line);
        if (!m) return line;
        const inc = m[2]!;
        const where = `${name}:${i + 1}`;
        if (m[1] !== '"' || !/^[\w.-]+$/.test(inc)) {
          throw new Error(`${where}: only #include "name" of a file in the kernel directory is supported, got '${line.trim()}'`);
        }
        if (chain.includes(inc)) throw new Error(`${where}: include cycle ${[...chain, inc].join(' -> ')}`);
        if (seen.has(inc)) return `// #include "${inc}" (already expanded above)`;
        seen.add(inc);
        return `// ---- begin ${inc}\n${expand(inc, [...chain, inc])}\n// ---- end ${inc}`;
      })
      .join('\n');
  };
  return expand(file, [file]);
}

/** One parameter of an `extern "C" __global__` kernel as declared in its source. */
export interface KernelParam {
  /** The C type as written, without qualifiers on the name, e.g. 'const float*'. */
  type: string;
  name: string;
  kind: ArgKind;
}

/** The slot kind of a C parameter type ('ptr' for any pointer); throws for other types. */
export function argKindOfCType(type: string): ArgKind {
  const t = type.replace(/\b(const|volatile|__restrict__|__restrict|restrict)\b/g, ' ').replace(/\s+/g, ' ').trim();
  if (t.endsWith('*')) return 'ptr';
  const kinds: Record<string, ArgKind> = {
    int: 'i32',
    'signed int': 'i32',
    unsigned: 'u32',
    'unsigned int': 'u32',
    'long long': 'i64',
    'long long int': 'i64',
    'unsigned long long': 'u64',
    'unsigned long long int': 'u64',
    float: 'f32',
    double: 'f64',
  };
  const k = kinds[t];
  if (!k) throw new TypeError(`unsupported kernel parameter type '${type}' (pointers, int, unsigned, long long, float, double)`);
  return k;
}

/** The `extern "C" __global__` kernels of a .cu source with their parameters, in order. */
export function parseKernelSignatures(source: string): Map<string, KernelParam[]> {
  const noComments = source.replace(/\/\*[\s\S]*?\*\//g, ' ').replace(/\/\/[^\n]*/g, ' ');
  const re = /extern\s+"C"\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s+)?void\s+(\w+)\s*\(([^)]*)\)/g;
  const out = new Map<string, KernelParam[]>();
  for (let m = re.exec(noComments); m; m = re.exec(noComments)) {
    const params: KernelParam[] = [];
    const list = m[2]!.trim();
    if (list !== '' && list !== 'void') {
      for (const raw of list.split(',')) {
        const p = raw.trim().match(/^(.*?)([A-Za-z_]\w*)$/s);
        if (!p) throw new SyntaxError(`kernel ${m[1]}: cannot read parameter '${raw.trim()}'`);
        const type = p[1]!.replace(/\b(__restrict__|__restrict)\b/g, ' ').replace(/\s+/g, ' ').replace(/\s*\*\s*/g, '*').trim();
        params.push({ type, name: p[2]!, kind: argKindOfCType(p[1]!) });
      }
    }
    if (out.has(m[1]!)) throw new SyntaxError(`kernel ${m[1]} is declared twice`);
    out.set(m[1]!, params);
  }
  return out;
}

/** Throws unless spec's parameter kinds match the kernel's declaration in `source`. */
export function checkKernelSpec(spec: KernelSpec, source: string): void {
  const sig = parseKernelSignatures(source).get(spec.name);
  if (!sig) throw new Error(`CUDA kernel ${spec.name}: no extern "C" __global__ kernel of that name in ${spec.file}`);
  const declared = sig.map((p) => p.kind);
  if (declared.length !== spec.params.length || declared.some((k, i) => k !== spec.params[i])) {
    throw new Error(
      `CUDA kernel ${spec.file}:${spec.name}: the wrapper passes (${spec.params.join(', ')}) ` +
        `but the source declares (${sig.map((p) => `${p.type} ${p.name}`).join(', ')})`,
    );
  }
}

// ---------------------------------------------------------------- kernel cache

/** Compiles one source (NVRTC in production; tests pass fakes). */
export type KernelCompiler = (source: string, name: string, options: readonly string[]) => CompiledKernelImage;

export interface KernelCacheInput {
  source: string;
  options: readonly string[];
  computeCapability: readonly [number, number];
  driverVersion: number;
  /** The compiler's version (NVRTC "major.minor"). */
  compilerVersion: string;
}

/** The cache file name for an input: sha256(source, options) + arch + driver + compiler. */
export function kernelCacheKey(input: KernelCacheInput): string {
  const h = createHash('sha256');
  h.update(input.source);
  for (const o of input.options) h.update('\0' + o);
  const [maj, min] = input.computeCapability;
  const compiler = input.compilerVersion.replace(/[^0-9A-Za-z.]/g, '_');
  return `${h.digest('hex').slice(0, 40)}-sm${maj}${min}-drv${input.driverVersion}-nvrtc${compiler}.bin`;
}

/** $EQAT_CACHE_DIR/cuda, else ~/.cache/eqat/cuda. */
export function defaultKernelCacheDir(): string {
  const root = process.env['EQAT_CACHE_DIR'];
  return root ? join(root, 'cuda') : join(homedir(), '.cache', 'eqat', 'cuda');
}

const CACHE_MAGIC = Buffer.from('EQATCUK1', 'ascii');

// File layout: magic (8) | kind u8 (0 cubin, 1 ptx) | arch length u8 | arch | payload length
// u32 LE | sha256(payload) (32) | payload.
function encodeCacheEntry(c: CompiledKernelImage): Buffer {
  const arch = Buffer.from(c.arch, 'ascii');
  const head = Buffer.alloc(8 + 2 + arch.length + 4 + 32);
  CACHE_MAGIC.copy(head, 0);
  head[8] = c.kind === 'cubin' ? 0 : 1;
  head[9] = arch.length;
  arch.copy(head, 10);
  head.writeUInt32LE(c.image.length, 10 + arch.length);
  createHash('sha256').update(c.image).digest().copy(head, 14 + arch.length);
  return Buffer.concat([head, c.image]);
}

function decodeCacheEntry(b: Buffer): CompiledKernelImage | null {
  if (b.length < 14 + 32 || !b.subarray(0, 8).equals(CACHE_MAGIC) || b[8]! > 1) return null;
  const archLen = b[9]!;
  const payloadAt = 14 + archLen + 32;
  if (b.length < payloadAt) return null;
  const len = b.readUInt32LE(10 + archLen);
  if (b.length !== payloadAt + len || len === 0) return null;
  const image = b.subarray(payloadAt);
  const digest = b.subarray(14 + archLen, payloadAt);
  if (!createHash('sha256').update(image).digest().equals(digest)) return null;
  return { image: new Uint8Array(image), kind: b[8] === 0 ? 'cubin' : 'ptx', arch: b.toString('ascii', 10, 10 + archLen), log: '' };
}

export interface CachedCompile extends CompiledKernelImage {
  /** True when the image came from the disk cache. */
  fromCache: boolean;
  /** The cache file. */
  path: string;
  /** Set when the entry could not be written (the image is still returned). */
  cacheError?: string;
}

/**
 * The compiled image for `input`, from `cacheDir` when a valid entry exists, else from
 * `compile` (then written to the cache atomically). A corrupt or truncated entry is
 * recompiled and replaced; a cache that cannot be written is not an error.
 */
export function compileCached(
  input: KernelCacheInput & { name: string; cacheDir: string; compile: KernelCompiler },
): CachedCompile {
  const path = join(input.cacheDir, kernelCacheKey(input));
  let bytes: Buffer | null = null;
  try {
    bytes = readFileSync(path);
  } catch {
    bytes = null;
  }
  const hit = bytes ? decodeCacheEntry(bytes) : null;
  if (hit) return { ...hit, fromCache: true, path };
  const compiled = input.compile(input.source, input.name, input.options);
  const result: CachedCompile = { ...compiled, fromCache: false, path };
  const tmp = `${path}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`;
  try {
    mkdirSync(input.cacheDir, { recursive: true });
    writeFileSync(tmp, encodeCacheEntry(compiled));
    renameSync(tmp, path);
  } catch (e) {
    result.cacheError = (e as Error).message;
    try {
      rmSync(tmp, { force: true });
    } catch {
      // nothing to clean up
    }
  }
  return result;
}

// ---------------------------------------------------------------- loading and launching

/** NVRTC options every kernel file is compiled with: IEEE f32 arithmetic, no fused multiply-add. */
export const KERNEL_OPTIONS: readonly string[] = ['--std=c++17', '--fmad=false'];

function loadModule(file: string, source: string): bigint {
  const cached = modules.get(file);
  if (cached !== undefined) return cached;
  const { probe, device } = cudaDevice();
  const backend = cudaBackend();
  const compiled = compileCached({
    source,
    options: KERNEL_OPTIONS,
    computeCapability: device.computeCapability,
    driverVersion: probe.driverVersion ?? 0,
    compilerVersion: probe.nvrtcVersion ?? 'unknown',
    name: file,
    cacheDir: defaultKernelCacheDir(),
    compile: (src, name, options) => backend.compile(src, name, options),
  });
  const module = backend.moduleLoad(compiled.image);
  modules.set(file, module);
  return module;
}

/** The function handle of a declared kernel: compiled (or cached), loaded and checked on first use. */
export function loadKernel(spec: KernelSpec): bigint {
  const key = `${spec.file}:${spec.name}`;
  const cached = functions.get(key);
  if (cached !== undefined) return cached;
  const source = kernelSource(spec.file);
  checkKernelSpec(spec, source);
  const fn = cudaBackend().getFunction(loadModule(spec.file, source), spec.name);
  functions.set(key, fn);
  return fn;
}

function dim3(d: number | Dim3, what: string): Dim3 {
  const v: Dim3 = typeof d === 'number' ? [d, 1, 1] : d;
  if (v.length !== 3 || v.some((x) => !Number.isInteger(x) || x < 1 || x > 2 ** 31 - 1)) {
    throw new RangeError(`launchKernel: ${what} must be positive integers, got [${String(v)}]`);
  }
  return v;
}

/** Queues spec on the stream with the given grid and block (numbers mean 1-D). */
export function launchKernel(
  spec: KernelSpec,
  grid: number | Dim3,
  block: number | Dim3,
  args: readonly KernelArg[],
  sharedBytes = 0,
): void {
  const packed = packArgs(spec.params, args, spec.name);
  const g = dim3(grid, 'grid'), b = dim3(block, 'block');
  cudaBackend().launch(loadKernel(spec), g, b, sharedBytes, packed);
}

/** Blocks for an elementwise kernel over n items: ceil(n / block), at least 1, at most 2^20 (kernels loop). */
export function gridFor(n: number, block: number): number {
  return Math.max(1, Math.min(Math.ceil(n / block), 1 << 20));
}

// ---------------------------------------------------------------- CUDA graphs

let capturing: string | null = null; // what is being captured, while a capture is open

/**
 * Host-synchronous work cannot be part of a graph (a capture would record a copy from pageable
 * memory, or wait on itself), so it is refused while a capture is open, on every backend alike.
 */
function refuseWhileCapturing(op: string): void {
  if (capturing !== null) throw new Error(`${op}: not allowed while a CUDA graph of ${capturing} is being captured`);
}

/** The reason graphs are off when the user turned them off (no note is printed for it). */
const GRAPHS_TURNED_OFF = 'EQAT_CUDA_GRAPHS=0';

/**
 * Why graph replay is off in this process ('' when it may be used): EQAT_CUDA_GRAPHS=0, or the
 * backend cannot. Any other value than unset, '', 0 or 1 is refused.
 */
export function cudaGraphsUnavailable(): string {
  const env = process.env['EQAT_CUDA_GRAPHS'];
  if (env === '0') return GRAPHS_TURNED_OFF;
  if (env !== undefined && env !== '' && env !== '1') throw new Error(`EQAT_CUDA_GRAPHS=${env}: must be 0 (op by op) or 1 (graphs, the default)`);
  const b = cudaBackend();
  if (!b.graphSupport || !b.graphBegin || !b.graphEnd || !b.graphLaunch || !b.graphDestroy) return `the ${b.name} CUDA backend has no graphs`;
  return b.graphSupport();
}

/**
 * Replays fixed sequences of device work, e.g. a training step, from captured CUDA graphs: one
 * driver call per step instead of one launch per op. Each sequence has a key (the variants of a
 * step, such as which parameter groups are updated). The first run of a key is eager (it loads
 * the kernels and lets cuBLASLt pick its algorithms), the second is captured and launched, and
 * every later one launches the captured graph.
 *
 * A sequence may only queue kernels, matmuls and memsets on fixed device buffers: uploads,
 * downloads, allocations and synchronisation are refused while capturing, and anything that
 * changes between runs (learning rates, batch data) must be written to device memory before
 * run(). If graphs are unavailable, or a capture fails on the device, runs stay eager and
 * `eagerReason` says why (a failed capture runs its sequence eagerly, so no step is lost).
 */
export class CudaStepGraphs {
  private readonly execs = new Map<string, bigint>();
  private readonly warmed = new Set<string>();
  /** Why runs are eager, or null while graphs are in use. */
  eagerReason: string | null;

  constructor(readonly what: string) {
    const why = cudaGraphsUnavailable();
    this.eagerReason = why === '' ? null : why;
  }

  /** Queues the sequence `key` (built by `queue`), replaying its graph when it has one. */
  run(key: string, queue: () => void): void {
    const b = cudaBackend();
    const exec = this.execs.get(key);
    if (exec !== undefined) return b.graphLaunch!(exec);
    if (this.eagerReason !== null || !this.warmed.has(key)) {
      this.warmed.add(key);
      return queue();
    }
    let captured: bigint | null = null;
    try {
      b.graphBegin!();
      capturing = this.what;
      try {
        queue();
      } finally {
        capturing = null;
        captured = b.graphEnd!(); // always ends the capture; throws when it was invalidated
      }
    } catch (e) {
      if (captured !== null) b.graphDestroy!(captured);
      this.eagerReason = `capturing a CUDA graph of ${this.what} failed: ${e instanceof Error ? e.message : String(e)}`;
      return queue();
    }
    this.execs.set(key, captured);
    b.graphLaunch!(captured);
  }

  /**
   * One line on stderr when runs went op by op although graphs were not turned off
   * (EQAT_CUDA_GRAPHS=0): the device could not capture them, and the user should know why.
   */
  noteIfEager(quiet: boolean): void {
    const reason = this.eagerReason;
    if (reason === null || quiet || reason === GRAPHS_TURNED_OFF) return;
    process.stderr.write(`note: CUDA steps run op by op, without graphs (${reason})\n`);
  }

  /** Number of captured graphs (tests). */
  get graphs(): number {
    return this.execs.size;
  }

  free(): void {
    const b = cudaBackend();
    for (const exec of this.execs.values()) b.graphDestroy!(exec);
    this.execs.clear();
  }
}
