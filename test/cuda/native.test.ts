// The native CUDA layer (native/cuda/*.cc) without a GPU. In this process: the probe's reason
// when libcuda is missing (it names libcuda.so.1, every path tried and dlopen's text),
// EQAT_CUDA_DISABLE, and the entry points' errors when CUDA is unavailable. In child processes
// whose LD_LIBRARY_PATH puts stand-in libraries first (fake/fake-cuda.c, built here with the C
// compiler): the probe, device memory and its bounds checks, NVRTC architecture choice and
// options, module loading and launches with packed arguments, the cuBLASLt call's layouts,
// and the errors for a failing cuInit, a driver missing entry points and a missing NVRTC; and,
// where a real NVRTC library is present, real compiles of every kernel file behind the
// stand-in driver.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { nativeFn, packageRoot } from '../../src/engine/native.js';
import { nativeCudaBackend, type CudaProbe } from '../../src/engine/cuda.js';

const realProbe = nativeCudaBackend().probe();

test('without libcuda the probe names libcuda.so.1, every path tried and dlopen\'s answer', { skip: realProbe.errors.driver ? false : 'libcuda is installed here' }, () => {
  const p = realProbe;
  assert.equal(p.available, false);
  assert.equal(p.reason, p.errors.driver);
  assert.match(p.reason!, /^CUDA driver library libcuda\.so\.1 not found; dlopen tried: libcuda\.so\.1 \(libcuda\.so\.1: cannot open shared object file: No such file or directory\); libcuda\.so \(/);
  for (const path of ['/usr/local/cuda/lib64/libcuda.so.1', '/usr/lib/x86_64-linux-gnu/libcuda.so.1', '/usr/lib64/libcuda.so.1', '/usr/lib64/libcuda.so']) {
    assert.ok(p.reason!.includes(path), `reason names ${path}`);
  }
  assert.match(p.reason!, /add the directory holding libcuda\.so\.1 to LD_LIBRARY_PATH/);
  assert.equal(p.errors.nvrtc, 'not loaded: the CUDA driver is unavailable');
  assert.deepEqual([p.driverVersion, p.devices, p.nvrtcVersion, p.cublasLt], [null, [], null, false]);
});

test('EQAT_CUDA_DISABLE=1 makes the probe report unavailable and every entry point refuse', () => {
  process.env['EQAT_CUDA_DISABLE'] = '1';
  try {
    const p = nativeCudaBackend().probe();
    assert.equal(p.available, false);
    assert.equal(p.reason, 'CUDA disabled by EQAT_CUDA_DISABLE=1');
    assert.throws(() => nativeFn<(n: number) => bigint>('cudaAlloc')(16), /^Error: cudaAlloc: CUDA is not available: CUDA disabled by EQAT_CUDA_DISABLE=1$/);
    assert.throws(() => nativeFn<(...a: unknown[]) => unknown>('cudaCompile')('', 'x.cu', []), /^Error: cudaCompile: CUDA is not available/);
    assert.throws(() => nativeFn<() => void>('cudaSynchronize')(), /^Error: cudaSynchronize: CUDA is not available/);
    process.env['EQAT_CUDA_DISABLE'] = '0';
    assert.notEqual(nativeCudaBackend().probe().reason, 'CUDA disabled by EQAT_CUDA_DISABLE=1', "'0' does not disable");
  } finally {
    delete process.env['EQAT_CUDA_DISABLE'];
  }
});

test('entry points validate their arguments before touching CUDA', () => {
  assert.throws(() => nativeFn<(...a: unknown[]) => unknown>('cudaAlloc')(), /cudaAlloc: expected 1 arguments, got 0/);
  assert.throws(() => nativeFn<(...a: unknown[]) => unknown>('cudaFree')(5), /cudaFree: argument 'handle' must be a BigInt handle/);
  assert.throws(() => nativeFn<(...a: unknown[]) => unknown>('cudaCompile')(1, 'x', []), /cudaCompile: argument 'source' must be a string/);
  assert.throws(() => nativeFn<(...a: unknown[]) => unknown>('cudaLaunch')(1n, [1, 1, 1], [1, 1, 1], 0, new ArrayBuffer(4)), /cudaLaunch: argument 'args' must hold whole 8-byte slots/);
});

// ---------------------------------------------------------------- stand-in libraries

const cc = process.env['CC'] || 'cc';
const haveCc = spawnSync(cc, ['--version']).status === 0;
let fakeRoot: string | undefined;

/** Builds the stand-ins into <root>/full (all three), <root>/no-graphs (all three, a driver without graphs), <root>/driver-only and <root>/empty-driver. */
function buildFakes(): string {
  if (fakeRoot) return fakeRoot;
  const root = mkdtempSync(join(tmpdir(), 'eqat-fake-cuda-'));
  const src = join(packageRoot(), 'test', 'cuda', 'fake', 'fake-cuda.c');
  const build = (define: string | null, out: string, source = src, extra: string[] = []): void => {
    mkdirSync(join(out, '..'), { recursive: true });
    const r = spawnSync(cc, ['-shared', '-fPIC', '-O1', ...(define ? [`-D${define}`] : []), ...extra, '-o', out, source], { encoding: 'utf8' });
    assert.equal(r.status, 0, `building ${out}:\n${r.stderr}`);
  };
  build('FAKE_DRIVER', join(root, 'full', 'libcuda.so.1'));
  build('FAKE_NVRTC', join(root, 'full', 'libnvrtc.so'));
  build('FAKE_CUBLASLT', join(root, 'full', 'libcublasLt.so'));
  build('FAKE_DRIVER', join(root, 'no-graphs', 'libcuda.so.1'), src, ['-DFAKE_NO_GRAPHS']);
  build('FAKE_NVRTC', join(root, 'no-graphs', 'libnvrtc.so'));
  build('FAKE_CUBLASLT', join(root, 'no-graphs', 'libcublasLt.so'));
  build('FAKE_DRIVER', join(root, 'driver-only', 'libcuda.so.1'));
  const empty = join(root, 'empty.c');
  writeFileSync(empty, 'int eqat_fake_nothing;\n');
  build(null, join(root, 'empty-driver', 'libcuda.so.1'), empty);
  fakeRoot = root;
  return root;
}

function scenario(name: string, libDir: string, env: Record<string, string> = {}, extraLibDir?: string): void {
  const childEnv: Record<string, string | undefined> = { ...process.env, ...env };
  childEnv['LD_LIBRARY_PATH'] = [join(buildFakes(), libDir), extraLibDir, process.env['LD_LIBRARY_PATH']].filter(Boolean).join(':');
  for (const k of ['EQAT_CUDA_DISABLE', 'EQAT_CUDA_DEVICE', 'FAKE_CUDA_INIT', 'FAKE_CUDA_CC', 'FAKE_NVRTC_ARCHS', 'FAKE_CUDA_DEVICES']) {
    if (!(k in env)) delete childEnv[k];
  }
  const child = join(packageRoot(), 'dist', 'test', 'cuda', 'fake', 'child.js');
  const r = spawnSync(process.execPath, [child, name], { encoding: 'utf8', env: childEnv });
  assert.equal(r.status, 0, `scenario ${name} failed:\n${r.stderr}${r.stdout}`);
  assert.match(r.stdout, new RegExp(`scenario ${name}: ok`));
}

const fakeSkip = haveCc ? false : `no C compiler ('${cc}') to build the stand-in CUDA libraries`;

test('with stand-in libraries: the probe reports driver, device, NVRTC and cuBLASLt', { skip: fakeSkip }, () => scenario('probe', 'full'));
test('with stand-in libraries: device memory, views and native bounds checks', { skip: fakeSkip }, () => scenario('memory', 'full'));
test('with stand-in libraries: NVRTC gets the options and the architecture (CUBIN, or PTX for a newer GPU)', { skip: fakeSkip }, () =>
  scenario('compile', 'full'),
);
test('with stand-in libraries: modules, functions and launches with packed arguments', { skip: fakeSkip }, () => scenario('launch', 'full'));
test('with stand-in libraries: page-locked staging memory for uploads', { skip: fakeSkip }, () => scenario('pinned', 'full'));
test('with stand-in libraries: CUDA graphs capture, replay and refuse copies', { skip: fakeSkip }, () => scenario('graph', 'full'));
test('with stand-in libraries: a driver without graphs is named and steps run eagerly', { skip: fakeSkip }, () =>
  scenario('no-graphs', 'no-graphs'),
);
test('with stand-in libraries: matmulCuda through the native cuBLASLt call matches the twin', { skip: fakeSkip }, () => scenario('gemm', 'full'));
test('with stand-in libraries: the TypeScript kernel path compiles, caches and launches natively', { skip: fakeSkip }, () =>
  scenario('ts-stack', 'full'),
);
test('with stand-in libraries: a failing cuInit is the reason', { skip: fakeSkip }, () => scenario('init-fails', 'full', { FAKE_CUDA_INIT: '100' }));
test('with stand-in libraries: EQAT_CUDA_DEVICE out of range or not a number is the reason', { skip: fakeSkip }, () => {
  scenario('bad-device-ordinal', 'full', { EQAT_CUDA_DEVICE: '2' });
  scenario('bad-device-ordinal', 'full', { EQAT_CUDA_DEVICE: 'x' });
});
test('with stand-in libraries: a driver without the entry points is named', { skip: fakeSkip }, () => scenario('driver-lacks-symbols', 'empty-driver'));
test('with stand-in libraries: a missing NVRTC is named with every path tried', { skip: fakeSkip }, () => scenario('no-nvrtc', 'driver-only'));

/** A directory holding a real NVRTC: $EQAT_TEST_NVRTC_DIR, else a CUDA toolkit's usual places. */
function realNvrtcDir(): string | null {
  const dirs = [process.env['EQAT_TEST_NVRTC_DIR'], process.env['CUDA_HOME'] && join(process.env['CUDA_HOME'], 'lib64'), '/usr/local/cuda/lib64'];
  for (const d of dirs) {
    if (d && existsSync(d) && readdirSync(d).some((f) => /^libnvrtc\.so(\.\d+)*$/.test(f))) return d;
  }
  return null;
}
const nvrtcDir = realNvrtcDir();

test(
  'with the stand-in driver and a real NVRTC: every kernel compiles to an sm_90 CUBIN, a newer GPU gets PTX',
  { skip: fakeSkip || (nvrtcDir ? false : 'no NVRTC library (set EQAT_TEST_NVRTC_DIR to a directory holding libnvrtc.so.*)') },
  () => scenario('real-nvrtc', 'driver-only', {}, nvrtcDir!),
);

test.after(() => {
  if (fakeRoot) rmSync(fakeRoot, { recursive: true, force: true });
});

export type { CudaProbe };
