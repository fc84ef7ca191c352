// Kernel sources and argument packing, without a GPU: packArgs' slot layout and checks, the
// signature parser, that every kernel the op wrappers declare exists as an extern "C"
// __global__ in native/cuda/kernels with the same parameter kinds (and that no kernel there is
// unused), and, where a CUDA toolkit's nvcc is installed, that the sources compile for sm_90
// with the options NVRTC gets (nvcc stands in for NVRTC here: the same front end, but it
// would also accept code that needs host headers, which NVRTC does not see).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import {
  argKindOfCType,
  KERNEL_OPTIONS,
  kernelSource,
  kernelSourceDir,
  packArgs,
  parseKernelSignatures,
  registeredKernels,
  type DeviceArray,
} from '../../src/engine/cuda.js';
import { packageRoot } from '../../src/engine/native.js';

test('packArgs: one little-endian 8-byte slot per parameter, values at the slot start', () => {
  const dev: DeviceArray = { handle: 0x7f00_1234_5678n, dtype: 'f32', length: 4, bytes: 16, owner: true };
  const buf = packArgs(
    ['ptr', 'ptr', 'i32', 'u32', 'i64', 'u64', 'f32', 'f64', 'ptr'],
    [dev, 0xdead_beefn, -7, 4_000_000_000, -(2n ** 40n), 2n ** 63n, 1.5, Math.PI, 0n],
  );
  assert.equal(buf.byteLength, 72);
  const v = new DataView(buf);
  assert.equal(v.getBigUint64(0, true), 0x7f00_1234_5678n);
  assert.equal(v.getBigUint64(8, true), 0xdead_beefn);
  assert.equal(v.getInt32(16, true), -7);
  assert.equal(v.getUint32(20, true), 0, 'the rest of a 4-byte slot is zero');
  assert.equal(v.getUint32(24, true), 4_000_000_000);
  assert.equal(v.getBigInt64(32, true), -(2n ** 40n));
  assert.equal(v.getBigUint64(40, true), 2n ** 63n);
  assert.equal(v.getFloat32(48, true), 1.5);
  assert.equal(v.getFloat64(56, true), Math.PI);
  assert.equal(v.getBigUint64(64, true), 0n);
  assert.equal(packArgs([], []).byteLength, 0);
});

test('packArgs: wrong count, types and out-of-range integers are rejected, naming the argument', () => {
  assert.throws(() => packArgs(['ptr', 'i32'], [1n], 'myKernel'), /myKernel: the kernel takes 2 arguments, got 1/);
  assert.throws(() => packArgs(['ptr'], [5]), /argument 0 \(ptr\) must be a DeviceArray or BigInt address/);
  assert.throws(() => packArgs(['ptr'], [-1n]), /argument 0 \(ptr\) must be a 64-bit address/);
  assert.throws(() => packArgs(['i32'], [2 ** 31]), /argument 0 \(i32\) must be in \[-2147483648, 2147483647\]/);
  assert.throws(() => packArgs(['u32'], [-1]), /argument 0 \(u32\) must be in/);
  assert.throws(() => packArgs(['i32'], [1.5]), /argument 0 \(i32\) must be an integer/);
  assert.throws(() => packArgs(['i64'], [2 ** 60]), /must be an integer/, 'unsafe integers as numbers are refused');
  assert.doesNotThrow(() => packArgs(['i64'], [2n ** 60n]));
  assert.throws(() => packArgs(['f32'], [1n]), /argument 0 \(f32\) must be a number/);
});

test('parseKernelSignatures reads extern "C" __global__ kernels and maps C types to slot kinds', () => {
  const src = `
    // extern "C" __global__ void commented_out(int x) {}
    /* extern "C" __global__ void also_commented(int x) {} */
    namespace h { __device__ float helper(float x) { return x; } }
    extern "C" __global__ void a(float* __restrict__ out, const float *x, long long n, int G,
                                 unsigned u, float alpha, double d, unsigned short* h16) { }
    extern "C" __global__ __launch_bounds__(256) void b() {}
    extern "C" __global__ void c(void) {}
  `;
  const sigs = parseKernelSignatures(src);
  assert.deepEqual([...sigs.keys()], ['a', 'b', 'c']);
  assert.deepEqual(sigs.get('a')!.map((p) => p.kind), ['ptr', 'ptr', 'i64', 'i32', 'u32', 'f32', 'f64', 'ptr']);
  assert.deepEqual(sigs.get('a')!.map((p) => p.name), ['out', 'x', 'n', 'G', 'u', 'alpha', 'd', 'h16']);
  assert.equal(sigs.get('a')![1]!.type, 'const float*');
  assert.deepEqual(sigs.get('b'), []);
  assert.deepEqual(sigs.get('c'), []);
  assert.equal(argKindOfCType('unsigned long long'), 'u64');
  assert.throws(() => argKindOfCType('short'), /unsupported kernel parameter type 'short'/);
  assert.throws(() => parseKernelSignatures('extern "C" __global__ void k(float4 v) {}'), /unsupported kernel parameter type 'float4 '/);
});

test('every kernel the CUDA op wrappers declare exists in native/cuda/kernels with matching parameters', async () => {
  // the wrappers: src/ops/cuda and the quantization ops' src/quant/cuda
  for (const sub of [['ops', 'cuda'], ['quant', 'cuda']]) {
    const dir = join(packageRoot(), 'dist', 'src', ...sub);
    for (const f of readdirSync(dir).filter((x) => x.endsWith('.js'))) await import(join(dir, f));
  }
  const specs = registeredKernels();
  assert.ok(specs.length >= 10, `expected the wrappers to declare their kernels, found ${specs.length}`);
  const dir = kernelSourceDir();
  const declared = new Map<string, string>(); // kernel -> file
  for (const file of readdirSync(dir).filter((x) => x.endsWith('.cu'))) {
    for (const name of parseKernelSignatures(readFileSync(join(dir, file), 'utf8')).keys()) {
      assert.ok(!declared.has(name), `kernel ${name} is defined in both ${declared.get(name)} and ${file}`);
      declared.set(name, file);
    }
  }
  for (const spec of specs) {
    assert.equal(declared.get(spec.name), spec.file, `kernel ${spec.name}: wrapper says ${spec.file}, sources say ${declared.get(spec.name)}`);
    const sig = parseKernelSignatures(readFileSync(join(dir, spec.file), 'utf8')).get(spec.name)!;
    assert.deepEqual(spec.params, sig.map((p) => p.kind), `kernel ${spec.name}: parameter kinds`);
  }
  const used = new Set(specs.map((s) => s.name));
  for (const name of declared.keys()) assert.ok(used.has(name), `kernel ${name} (${declared.get(name)}) is not used by any wrapper`);
});

function findNvcc(): string | null {
  const candidates = [process.env['CUDA_HOME'], process.env['CUDA_PATH'], '/usr/local/cuda']
    .filter((d): d is string => !!d)
    .map((d) => join(d, 'bin', 'nvcc'));
  for (const c of candidates) if (existsSync(c)) return c;
  const which = spawnSync('sh', ['-c', 'command -v nvcc'], { encoding: 'utf8' });
  return which.status === 0 && which.stdout.trim() ? which.stdout.trim() : null;
}

test('kernelSource expands #include "name" from the kernel directory once, and rejects anything else', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-kernel-src-'));
  try {
    writeFileSync(join(dir, 'a.cuh'), '#ifndef A\n#define A\nint a;\n#endif');
    writeFileSync(join(dir, 'b.cuh'), '#include "a.cuh"\nint b;');
    writeFileSync(join(dir, 'k.cu'), '#include "a.cuh"\n  #include "b.cuh"  // comment\nint k;');
    const text = kernelSource('k.cu', dir);
    assert.equal(text.match(/int a;/g)?.length, 1, 'a.cuh is expanded once');
    assert.match(text, /int b;[\s\S]*int k;/);
    assert.doesNotMatch(text.replace(/\/\/[^\n]*/g, ''), /#\s*include/);
    writeFileSync(join(dir, 'sys.cu'), '#include <stdio.h>\n');
    assert.throws(() => kernelSource('sys.cu', dir), /sys\.cu:1: only #include "name"/);
    writeFileSync(join(dir, 'path.cu'), '#include "../x.cuh"\n');
    assert.throws(() => kernelSource('path.cu', dir), /path\.cu:1: only #include "name"/);
    writeFileSync(join(dir, 'c1.cuh'), '#include "c2.cuh"\n');
    writeFileSync(join(dir, 'c2.cuh'), '#include "c1.cuh"\n');
    assert.throws(() => kernelSource('c1.cuh', dir), /include cycle c1\.cuh -> c2\.cuh -> c1\.cuh/);
    assert.throws(() => kernelSource('missing.cu', dir), /ENOENT/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  // the real sources: every file expands with no include left, and declares the same kernels
  for (const f of readdirSync(kernelSourceDir()).filter((x) => x.endsWith('.cu'))) {
    const text = kernelSource(f);
    assert.doesNotMatch(text.replace(/\/\/[^\n]*/g, ''), /#\s*include/, f);
    assert.deepEqual([...parseKernelSignatures(text).keys()], [...parseKernelSignatures(readFileSync(join(kernelSourceDir(), f), 'utf8')).keys()], f);
  }
});

const nvcc = findNvcc();

test('the kernel sources compile for sm_90 with the NVRTC options (nvcc, when installed)', { skip: nvcc ? false : 'no nvcc (CUDA toolkit) installed' }, () => {
  const dir = kernelSourceDir();
  const work = mkdtempSync(join(tmpdir(), 'eqat-nvcc-'));
  try {
    const all = join(work, 'all.cu');
    const files = readdirSync(dir).filter((x) => x.endsWith('.cu')).sort();
    writeFileSync(all, files.map((f) => `#include "${join(dir, f)}"`).join('\n') + '\n');
    const r = spawnSync(nvcc!, ['-arch=sm_90', '-cubin', ...KERNEL_OPTIONS, '-Werror', 'all-warnings', '-Xptxas', '-v', '-o', join(work, 'all.cubin'), all], {
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, `nvcc failed:\n${r.stderr}`);
    assert.doesNotMatch(r.stderr, /warning/i, r.stderr);
    // files with includes also compile alone, expanded as NVRTC receives them
    for (const f of files.filter((x) => /#\s*include/.test(readFileSync(join(dir, x), 'utf8')))) {
      const alone = join(work, f);
      writeFileSync(alone, kernelSource(f));
      const one = spawnSync(nvcc!, ['-arch=sm_90', '-cubin', ...KERNEL_OPTIONS, '-Werror', 'all-warnings', '-o', join(work, f + '.cubin'), alone], {
        encoding: 'utf8',
      });
      assert.equal(one.status, 0, `nvcc failed on the expanded ${f}:\n${one.stderr}`);
    }
    const spills = [...r.stderr.matchAll(/(\d+) bytes spill stores/g)].map((m) => Number(m[1]));
    assert.ok(spills.length >= 10 && spills.every((s) => s === 0), `register spills: ${r.stderr}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
});
