// A CudaBackend that runs the real kernel sources (native/cuda/kernels/*.cu) on the CPU, for
// tests on machines without a GPU. The sources are compiled unchanged by the host C++ compiler
// with test/cuda/emu/shim.h in front (coroutine threads, barriers, warp shuffles) into one
// runner program; one runner process per backend, started at the first launch, runs every
// launch (process.ts). Device memory is a file shared with the runner (memory.ts): Node reads
// and writes it for copies, memsets and the GEMM, the runner maps the buffers a launch touches,
// and a launch sends only the kernel's name, shape and arguments. Device addresses are fake
// (256-byte aligned like cuMemAlloc's, never reused); a launch turns its pointer arguments into
// the runner's addresses of the same bytes. "Compiling" returns the source itself (parsed for
// its kernel signatures, which getFunction and launch check as the driver would); gemm is the
// column-major reference (gemm-ref.ts).
//
// What this checks: the kernels' arithmetic and indexing, their block/warp synchronisation (a
// divergent barrier or deadlock fails), out-of-bounds accesses past a buffer's end, the
// wrappers' argument packing and launch shapes, and the kernel cache path. What it cannot:
// NVRTC itself, the GPU's memory model and timing, and CUDA's own math library (exp may differ
// from libm's in the last bit). A failed launch throws an Error naming the kernel with the
// runner's text; the runner has then exited and a new one serves the next launch (device memory
// is kept, with whatever the failed kernel wrote).
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, readdirSync, renameSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { bf16ToF32Ref, f32ToBf16Ref } from '../../../src/engine/dtype.js';
import {
  kernelSourceDir,
  parseKernelSignatures,
  type CompiledKernelImage,
  type CudaBackend,
  type CudaProbe,
  type Dim3,
  type GemmArgs,
  type KernelParam,
} from '../../../src/engine/cuda.js';
import { packageRoot } from '../../../src/engine/native.js';
import { gemmColMajorRef, gemmExtent } from './gemm-ref.js';
import { DeviceMemoryFile, REGION_BASE, type Placement } from './memory.js';
import { RunnerProcess } from './process.js';

const ACCESSOR: Record<KernelParam['kind'], string> = {
  ptr: 'as_ptr',
  i32: 'as_i32',
  u32: 'as_u32',
  i64: 'as_i64',
  u64: 'as_u64',
  f32: 'as_f32',
  f64: 'as_f64',
};

/** The dispatch function of the runner: one branch per kernel, casting slots to the declared types. */
function dispatchSource(kernels: Map<string, KernelParam[]>): string {
  const lines = ['bool emu_dispatch(const std::string& name, const std::vector<uint64_t>& s) {'];
  for (const [name, params] of kernels) {
    const args = params.map((p, i) => `(${p.type})emu::${ACCESSOR[p.kind]}(s[${i}])`);
    const decls = args.map((a, i) => `auto a${i} = ${a};`).join(' ');
    const call = `${name}(${params.map((_, i) => `a${i}`).join(', ')})`;
    const count = `if (s.size() != ${params.length}) emu::fail("${name}: wrong slot count");`;
    lines.push(`  if (name == "${name}") { ${count} ${decls} emu::g_kernel = [=] { ${call}; }; return true; }`);
  }
  lines.push('  return false;', '}');
  return lines.join('\n') + '\n';
}

let built: { exe: string } | { skip: string } | undefined;

/** Builds (once per source version, cached under the temp directory) the runner program. */
export function buildEmulator(): { exe: string } | { skip: string } {
  if (built) return built;
  const emuDir = join(packageRoot(), 'test', 'cuda', 'emu');
  const kdir = kernelSourceDir();
  const files = readdirSync(kdir).filter((f) => f.endsWith('.cu')).sort();
  const kernels = new Map<string, KernelParam[]>();
  const hash = createHash('sha256');
  for (const name of ['shim.h', 'runner.h']) hash.update(readFileSync(join(emuDir, name)));
  for (const f of files) {
    const src = readFileSync(join(kdir, f), 'utf8');
    for (const [k, v] of parseKernelSignatures(src)) kernels.set(k, v);
  }
  // every source and header of the kernel directory (headers change the program too)
  for (const f of readdirSync(kdir).sort()) hash.update(f + '\0' + readFileSync(join(kdir, f), 'utf8'));
  const cxx = process.env['CXX'] || 'g++';
  const version = spawnSync(cxx, ['--version'], { encoding: 'utf8' });
  if (version.status !== 0) {
    built = { skip: `no host C++ compiler ('${cxx} --version' failed) to build the CUDA kernel emulator` };
    return built;
  }
  hash.update(version.stdout);
  const dir = join(tmpdir(), 'eqat-cuda-emu', hash.digest('hex').slice(0, 16));
  const exe = join(dir, 'runner');
  if (!existsSync(exe)) {
    mkdirSync(dir, { recursive: true });
    const src = [
      `#include "${join(emuDir, 'shim.h')}"`,
      ...files.map((f) => `#include "${join(kdir, f)}"`),
      `#include "${join(emuDir, 'runner.h')}"`,
      dispatchSource(kernels),
    ].join('\n');
    const gen = join(dir, `runner-${process.pid}.cc`);
    writeFileSync(gen, src);
    const tmpExe = `${exe}.${process.pid}.tmp`;
    const r = spawnSync(cxx, ['-std=c++17', '-O1', '-ffp-contract=off', '-w', '-o', tmpExe, gen], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`building the CUDA kernel emulator failed:\n${r.stderr}`);
    renameSync(tmpExe, exe);
  }
  built = { exe };
  return built;
}

interface EmuFunction {
  name: string;
  params: KernelParam[];
}

/** A live allocation: its size and where its bytes lie in the memory file. */
interface Allocation extends Placement {
  bytes: number;
}

/** The emulator backend (see the file header); counters let tests see compiles and launches. */
export class EmulatorBackend implements CudaBackend {
  readonly name = 'emulator';
  compiles = 0;
  launches = 0;
  graphLaunches = 0;
  hostAllocs = 0;
  /** Runner processes started: one, plus one after each failed launch. */
  runnerStarts = 0;
  /** Work recorded by an open capture (graphBegin .. graphEnd), run by graphLaunch. */
  private capture: (() => void)[] | null = null;
  private readonly graphs = new Map<bigint, (() => void)[]>();
  private readonly allocs = new Map<bigint, Allocation>();
  private nextAddress = 0x10000000n;
  private readonly modulesById = new Map<bigint, Map<string, KernelParam[]>>();
  private readonly fns = new Map<bigint, EmuFunction>();
  private nextHandle = 1n;
  private memoryFile: DeviceMemoryFile | null = null;
  private runner: RunnerProcess | null = null;
  private disposed = false;

  /** `exe`: the runner program from buildEmulator ('' for a backend that only holds memory). */
  constructor(private readonly exe: string) {}

  /** Live allocations (for leak checks). */
  get liveAllocations(): number {
    return this.allocs.size;
  }

  /** Stops the runner and drops the device memory; the backend is unusable afterwards. */
  dispose(): void {
    this.disposed = true;
    this.runner?.stop();
    this.runner = null;
    this.memoryFile?.close();
    this.memoryFile = null;
  }

  /** The device memory file, created on first use. */
  private get memory(): DeviceMemoryFile {
    if (this.disposed) throw new Error('the CUDA kernel emulator was used after dispose()');
    return (this.memoryFile ??= new DeviceMemoryFile());
  }

  /** Host memory stands in for the device: "total" is a fixed 1 TiB, "free" what the live allocations leave. */
  memInfo(): { free: number; total: number } {
    let used = 0;
    for (const a of this.allocs.values()) used += a.bytes;
    return { free: 2 ** 40 - used, total: 2 ** 40 };
  }

  probe(): CudaProbe {
    return {
      available: true,
      driverVersion: 0,
      devices: [{ index: 0, name: 'eqat CUDA kernel emulator (CPU)', computeCapability: [0, 0], totalMemory: 0 }],
      device: 0,
      nvrtcVersion: 'emulator',
      nvrtcArchs: [],
      cublasLt: true,
      cublasLtVersion: null,
      libraries: {},
      errors: {},
    };
  }

  alloc(bytes: number): bigint {
    if (!Number.isSafeInteger(bytes) || bytes < 1) throw new RangeError("cudaAlloc: argument 'bytes' must be >= 1");
    const base = this.nextAddress;
    this.allocs.set(base, { bytes, ...this.memory.place(bytes) });
    // 256-byte aligned like cuMemAlloc, with a gap so adjacent allocations never touch.
    this.nextAddress += BigInt(Math.ceil(bytes / 256) * 256 + 256);
    return base;
  }

  /** Page-locked host memory is ordinary memory here (copies are synchronous anyway). */
  hostAlloc(bytes: number): ArrayBuffer {
    this.hostAllocs++;
    return new ArrayBuffer(bytes);
  }

  free(handle: bigint): void {
    const a = this.allocs.get(handle);
    if (!a) throw new RangeError("cudaFree: argument 'handle' is not a live allocation from cudaAlloc");
    this.allocs.delete(handle);
    this.memory.release(a);
  }

  /** The allocation holding [addr, addr + bytes) and the file offset of addr. */
  private locate(addr: bigint, bytes: number, op: string): { alloc: Allocation; at: number } {
    for (const [base, a] of this.allocs) {
      if (addr >= base && addr + BigInt(bytes) <= base + BigInt(a.bytes)) return { alloc: a, at: a.data + Number(addr - base) };
    }
    throw new RangeError(`${op}: device range [0x${addr.toString(16)}, +${bytes} bytes) is not inside a live allocation`);
  }

  upload(handle: bigint, src: ArrayBufferView, byteOffset: number): void {
    this.refuseInCapture('cudaUpload');
    const { at } = this.locate(handle + BigInt(byteOffset), src.byteLength, 'cudaUpload');
    this.memory.write(at, new Uint8Array(src.buffer, src.byteOffset, src.byteLength));
  }

  download(handle: bigint, dst: ArrayBufferView, byteOffset: number): void {
    this.refuseInCapture('cudaDownload');
    const { at } = this.locate(handle + BigInt(byteOffset), dst.byteLength, 'cudaDownload');
    this.memory.read(at, new Uint8Array(dst.buffer, dst.byteOffset, dst.byteLength));
  }

  memset0(handle: bigint, bytes: number): void {
    const { at } = this.locate(handle, bytes, 'cudaMemset0');
    if (this.capture) {
      this.capture.push(() => this.memset0(handle, bytes));
      return;
    }
    this.memory.zero(at, bytes);
  }

  // Graphs: a capture records each launch, matmul and memset with a copy of its arguments (as
  // the driver copies kernel parameters), a launch of the graph replays them in order; copies
  // and synchronisation during a capture invalidate it, as on a GPU.
  graphSupport(): string {
    return '';
  }

  graphBegin(): void {
    if (this.capture) throw new Error('cudaGraphBegin: cuStreamBeginCapture_v2 failed: a capture is already open');
    this.capture = [];
  }

  graphEnd(): bigint {
    const work = this.capture;
    if (!work) throw new Error('cudaGraphEnd: cuStreamEndCapture failed: no capture is open');
    this.capture = null;
    if (this.captureInvalid) {
      this.captureInvalid = false;
      throw new Error('cudaGraphEnd: cuStreamEndCapture failed: CUDA_ERROR_STREAM_CAPTURE_INVALIDATED');
    }
    const id = this.nextHandle++;
    this.graphs.set(id, work);
    return id;
  }

  graphLaunch(exec: bigint): void {
    const work = this.graphs.get(exec);
    if (!work || this.capture) throw new Error('cudaGraphLaunch: cuGraphLaunch failed: CUDA_ERROR_INVALID_VALUE');
    for (const w of work) w();
    this.graphLaunches++;
  }

  graphDestroy(exec: bigint): void {
    if (!this.graphs.delete(exec)) throw new Error('cudaGraphDestroy: cuGraphExecDestroy failed: CUDA_ERROR_INVALID_VALUE');
  }

  /** Live instantiated graphs (leak checks). */
  get liveGraphs(): number {
    return this.graphs.size;
  }

  private captureInvalid = false;

  /** A copy or wait during a capture: the capture is invalidated and the call fails, as on a GPU. */
  private refuseInCapture(op: string): void {
    if (!this.capture) return;
    this.captureInvalid = true;
    throw new Error(`${op}: CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED (operation not permitted when stream is capturing)`);
  }

  synchronize(): void {
    this.refuseInCapture('cudaSynchronize');
  }

  compile(source: string, _name: string, _options: readonly string[]): CompiledKernelImage {
    this.compiles++;
    parseKernelSignatures(source); // a malformed declaration fails here, like a compile error
    return { image: new TextEncoder().encode(source), kind: 'ptx', arch: 'emulator', log: '' };
  }

  moduleLoad(image: Uint8Array): bigint {
    const id = this.nextHandle++;
    this.modulesById.set(id, parseKernelSignatures(new TextDecoder().decode(image)));
    return id;
  }

  getFunction(module: bigint, name: string): bigint {
    const sigs = this.modulesById.get(module);
    if (!sigs) throw new Error('cudaGetFunction: invalid module handle');
    const params = sigs.get(name);
    if (!params) throw new Error(`cudaGetFunction: cuModuleGetFunction(${name}) failed: CUDA_ERROR_NOT_FOUND (named symbol not found)`);
    const id = this.nextHandle++;
    this.fns.set(id, { name, params });
    return id;
  }

  launch(fn: bigint, grid: Dim3, block: Dim3, sharedBytes: number, args: ArrayBuffer): void {
    const f = this.fns.get(fn);
    if (!f) throw new Error('cudaLaunch: invalid function handle');
    if (args.byteLength % 8 !== 0) throw new RangeError(`cudaLaunch: argument 'args' must hold whole 8-byte slots`);
    const slots = args.byteLength / 8;
    if (slots !== f.params.length) {
      throw new RangeError(`cudaLaunch: the kernel takes ${f.params.length} parameters, 'args' packs ${slots}`);
    }
    if (block[0] * block[1] * block[2] > 1024) throw new RangeError(`cudaLaunch: ${f.name}: more than 1024 threads per block`);
    if (this.capture) {
      const copy = args.slice(0);
      this.capture.push(() => this.launch(fn, grid, block, sharedBytes, copy));
      return;
    }
    // The request of runner.h: pointer slots become runner addresses; the buffers they point
    // into are listed so that the runner maps them.
    const name = Buffer.from(f.name, 'utf8');
    const used = new Set<Allocation>();
    const slotValues = new DataView(args.slice(0));
    f.params.forEach((p, i) => {
      if (p.kind !== 'ptr') return;
      const addr = slotValues.getBigUint64(8 * i, true);
      if (addr === 0n) return;
      const { alloc, at } = this.locate(addr, 0, `cudaLaunch (${f.name}, argument ${i} '${p.name}')`);
      used.add(alloc);
      slotValues.setBigUint64(8 * i, REGION_BASE + BigInt(at), true);
    });
    const request = Buffer.alloc(4 + 4 + name.length + 28 + 4 + 8 * slots + 4 + 16 * used.size);
    let at = request.writeUInt32LE(request.length - 4, 0);
    at = request.writeUInt32LE(name.length, at);
    at += name.copy(request, at);
    for (const d of [...grid, ...block, sharedBytes]) at = request.writeUInt32LE(d, at);
    at = request.writeUInt32LE(slots, at);
    at += Buffer.from(slotValues.buffer).copy(request, at);
    at = request.writeUInt32LE(used.size, at);
    for (const a of used) {
      at = request.writeBigUInt64LE(BigInt(a.offset), at);
      at = request.writeBigUInt64LE(BigInt(a.span), at);
    }
    if (!this.runner) {
      this.runner = RunnerProcess.start(this.exe, this.memory.fd);
      this.runnerStarts++;
    }
    const failure = this.runner.run(request);
    if (failure !== undefined) {
      this.runner = null;
      throw new Error(
        `emulated launch of ${f.name} failed: ${failure} (the runner has exited; a new one serves the next launch, ` +
          'device memory is kept with whatever the kernel wrote)',
      );
    }
    this.launches++;
  }

  gemm(g: GemmArgs): void {
    if (this.capture) {
      const copy = { ...g };
      this.capture.push(() => this.gemm(copy));
      return;
    }
    const rowsA = g.opA === 0 ? g.m : g.k, colsA = g.opA === 0 ? g.k : g.m;
    const rowsB = g.opB === 0 ? g.k : g.n, colsB = g.opB === 0 ? g.n : g.k;
    if (g.lda < rowsA || g.ldb < rowsB || g.ldc < g.m) throw new RangeError('cudaGemm: leading dimension too small');
    const abBytes = g.abType === 'f32' ? 4 : 2, cBytes = g.cType === 'f32' ? 4 : 2;
    const read = (h: bigint, n: number, type: 'f32' | 'bf16'): Float32Array => {
      const bytes = n * (type === 'f32' ? 4 : 2);
      const { at } = this.locate(h, bytes, 'cudaGemm');
      const copy = new Uint8Array(bytes);
      this.memory.read(at, copy);
      if (type === 'f32') return new Float32Array(copy.buffer);
      const h16 = new Uint16Array(copy.buffer);
      return Float32Array.from(h16, (x) => bf16ToF32Ref(x));
    };
    const b = g.batch ?? { count: 1, strideA: 0, strideB: 0, strideC: 0 };
    for (let i = 0; i < b.count; i++) {
      const Ah = g.A + BigInt(i * b.strideA * abBytes), Bh = g.B + BigInt(i * b.strideB * abBytes), Ch = g.C + BigInt(i * b.strideC * cBytes);
      const A = read(Ah, gemmExtent(rowsA, colsA, g.lda), g.abType);
      const B = read(Bh, gemmExtent(rowsB, colsB, g.ldb), g.abType);
      const nC = gemmExtent(g.m, g.n, g.ldc);
      const C = read(Ch, nC, g.cType);
      gemmColMajorRef(g, A, B, C);
      const { at } = this.locate(Ch, nC * cBytes, 'cudaGemm');
      if (g.cType === 'f32') this.memory.write(at, new Uint8Array(C.buffer));
      else this.memory.write(at, new Uint8Array(Uint16Array.from(C, (x) => f32ToBf16Ref(x)).buffer));
    }
  }
}

/** An emulator backend, or the reason it cannot be built here. */
export function cudaEmulator(): EmulatorBackend | string {
  const b = buildEmulator();
  return 'skip' in b ? b.skip : new EmulatorBackend(b.exe);
}
