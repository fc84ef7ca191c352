// Loads the native CPU addon (build/Release/eqat.node) once and hands out its functions.
//
// Each op file asks for the entry points it uses by name with nativeFn(); the addon registers
// them from native/cpu/<op>.cc. Arguments are typed arrays and numbers; the addon validates
// lengths and runs the kernel synchronously.
import { createRequire } from 'node:module';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/** The project root: the nearest ancestor of this file that holds package.json. */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json')) && existsSync(join(dir, 'binding.gyp'))) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error('eqat: cannot find the package root above ' + fileURLToPath(import.meta.url));
    dir = up;
  }
}

export interface CpuInfo {
  avx2: boolean;
  avx512: boolean;
  threads: number;
}

type Addon = Record<string, (...args: unknown[]) => unknown> & {
  cpuInfo(): CpuInfo;
  setThreads(n: number): void;
};

let addon: Addon | undefined;

/**
 * The loaded addon: the one built here (build/Release/eqat.node) when present, else the prebuilt
 * one a packed package carries (prebuilds/<platform>-<arch>/eqat.node, scripts/build-native.mjs);
 * throws a clear error when there is neither.
 */
export function native(): Addon {
  if (addon) return addon;
  const root = packageRoot();
  const built = join(root, 'build', 'Release', 'eqat.node');
  const prebuilt = join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'eqat.node');
  const path = [built, prebuilt].find((p) => existsSync(p));
  if (!path) {
    throw new Error(`eqat: native addon not found at ${built} (nor a prebuilt one at ${prebuilt}); run \`npm install\` (or \`npm run build\`) to build it`);
  }
  addon = createRequire(import.meta.url)(path) as Addon;
  return addon;
}

/** A named native entry point, typed by the caller. */
export function nativeFn<F extends (...args: never[]) => unknown>(name: string): F {
  const fn = native()[name];
  if (typeof fn !== 'function') throw new Error(`eqat: native addon has no function '${name}' (rebuild with npm run build)`);
  return fn as unknown as F;
}
