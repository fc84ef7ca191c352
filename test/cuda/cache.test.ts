// The on-disk kernel cache with an injected fake compiler (no GPU, no NVRTC): a miss compiles
// and writes, a hit does not compile, another architecture / driver / compiler / source / option
// is another key, and a corrupt or truncated entry is recompiled and replaced, never fatal.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, readdirSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  compileCached,
  defaultKernelCacheDir,
  kernelCacheKey,
  type CompiledKernelImage,
  type KernelCacheInput,
} from '../../src/engine/cuda.js';

function fakeCompiler(): { compile: (s: string, n: string, o: readonly string[]) => CompiledKernelImage; calls: number } {
  const f = {
    calls: 0,
    compile(source: string, name: string, options: readonly string[]): CompiledKernelImage {
      f.calls++;
      const image = new TextEncoder().encode(`IMAGE(${name}|${options.join(' ')}|${source})`);
      return { image, kind: f.calls % 2 ? 'cubin' : 'ptx', arch: 'sm_90', log: 'compiled' };
    },
  };
  return f;
}

const base: KernelCacheInput = {
  source: 'extern "C" __global__ void k(float* x) {}',
  options: ['--std=c++17', '--fmad=false'],
  computeCapability: [9, 0],
  driverVersion: 13000,
  compilerVersion: '13.0',
};

test('kernel cache: miss compiles and writes, hit does not compile and returns the same image', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-kcache-'));
  try {
    const fc = fakeCompiler();
    const first = compileCached({ ...base, name: 'k.cu', cacheDir: join(dir, 'nested', 'cuda'), compile: fc.compile });
    assert.equal(first.fromCache, false);
    assert.equal(fc.calls, 1);
    assert.equal(first.cacheError, undefined);
    assert.deepEqual(readdirSync(join(dir, 'nested', 'cuda')), [kernelCacheKey(base)], 'one file, no temporaries left');
    const second = compileCached({ ...base, name: 'k.cu', cacheDir: join(dir, 'nested', 'cuda'), compile: fc.compile });
    assert.equal(second.fromCache, true);
    assert.equal(fc.calls, 1, 'a hit must not compile');
    assert.deepEqual(Buffer.from(second.image), Buffer.from(first.image));
    assert.equal(second.kind, first.kind);
    assert.equal(second.arch, 'sm_90');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('kernel cache: architecture, driver, compiler, source and options each change the key', () => {
  const k0 = kernelCacheKey(base);
  assert.match(k0, /^[0-9a-f]{40}-sm90-drv13000-nvrtc13\.0\.bin$/);
  const variants: KernelCacheInput[] = [
    { ...base, computeCapability: [8, 9] },
    { ...base, computeCapability: [10, 0] },
    { ...base, driverVersion: 13010 },
    { ...base, compilerVersion: '13.1' },
    { ...base, source: base.source + ' ' },
    { ...base, options: ['--std=c++17'] },
    { ...base, options: ['--std=c++17', '--fmad=true'] },
  ];
  const keys = new Set([k0, ...variants.map(kernelCacheKey)]);
  assert.equal(keys.size, variants.length + 1);
  // options are separated: ['ab'] and ['a', 'b'] differ
  assert.notEqual(kernelCacheKey({ ...base, options: ['ab'] }), kernelCacheKey({ ...base, options: ['a', 'b'] }));

  const dir = mkdtempSync(join(tmpdir(), 'eqat-kcache-'));
  try {
    const fc = fakeCompiler();
    compileCached({ ...base, name: 'k.cu', cacheDir: dir, compile: fc.compile });
    compileCached({ ...base, computeCapability: [8, 0], name: 'k.cu', cacheDir: dir, compile: fc.compile });
    compileCached({ ...base, driverVersion: 12080, name: 'k.cu', cacheDir: dir, compile: fc.compile });
    compileCached({ ...base, source: 'changed', name: 'k.cu', cacheDir: dir, compile: fc.compile });
    assert.equal(fc.calls, 4);
    assert.equal(readdirSync(dir).length, 4);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('kernel cache: a truncated, corrupt or foreign entry is recompiled and replaced', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-kcache-'));
  try {
    const fc = fakeCompiler();
    const first = compileCached({ ...base, name: 'k.cu', cacheDir: dir, compile: fc.compile });
    const good = readFileSync(first.path);
    const damaged: [string, Buffer][] = [
      ['truncated payload', good.subarray(0, good.length - 3)],
      ['truncated header', good.subarray(0, 12)],
      ['empty', Buffer.alloc(0)],
      ['flipped payload byte', Buffer.from(good).fill(good[good.length - 1]! ^ 0xff, good.length - 1)],
      ['trailing garbage', Buffer.concat([good, Buffer.from('xx')])],
      ['foreign file', Buffer.from('not a cache entry at all, just text of some length ...')],
    ];
    let expectedCalls = 1;
    for (const [what, bytes] of damaged) {
      writeFileSync(first.path, bytes);
      const r = compileCached({ ...base, name: 'k.cu', cacheDir: dir, compile: fc.compile });
      expectedCalls++;
      assert.equal(r.fromCache, false, `${what}: must recompile`);
      assert.equal(fc.calls, expectedCalls, what);
      assert.ok(readFileSync(first.path).length > 46, `${what}: entry rewritten`);
      assert.equal(compileCached({ ...base, name: 'k.cu', cacheDir: dir, compile: fc.compile }).fromCache, true, `${what}: then a hit`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('kernel cache: an unwritable cache directory is not an error', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-kcache-'));
  try {
    const blocker = join(dir, 'file');
    writeFileSync(blocker, 'x'); // the cache "directory" is a regular file: mkdir fails
    const fc = fakeCompiler();
    const r = compileCached({ ...base, name: 'k.cu', cacheDir: join(blocker, 'cuda'), compile: fc.compile });
    assert.equal(r.fromCache, false);
    assert.ok(r.cacheError, 'the write failure is reported');
    assert.ok(r.image.length > 0);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('kernel cache directory: $EQAT_CACHE_DIR/cuda, else ~/.cache/eqat/cuda', () => {
  const saved = process.env['EQAT_CACHE_DIR'];
  try {
    process.env['EQAT_CACHE_DIR'] = '/some/where';
    assert.equal(defaultKernelCacheDir(), '/some/where/cuda');
    delete process.env['EQAT_CACHE_DIR'];
    assert.match(defaultKernelCacheDir(), /\/\.cache\/eqat\/cuda$/);
  } finally {
    if (saved === undefined) delete process.env['EQAT_CACHE_DIR'];
    else process.env['EQAT_CACHE_DIR'] = saved;
  }
});
