// A file-system fault for the fault-injection tests, loaded into an eqat process with
// `node --import dist/test/fault/fs-fault.js` and armed by EQAT_TEST_FS_FAULT (set only by the
// tests): JSON {"code": "ENOSPC" | "EROFS" | "EACCES", "under": "/dir", "afterBytes"?: n}, or a
// list of them for directories that fail apart (each counts the bytes written under it).
// Every write under `under` fails with `code`, once `afterBytes` bytes went there when it is
// given (a disk that fills; a file system remounted read-only, or permissions taken away, in
// the middle of a run), else from the first: opening a file for writing, writes to such a file,
// mkdir, rename / link / copy to it (a rename, for EROFS and EACCES only).
// It simulates a full disk or a read-only file system without root, as the tests cannot mount
// one; the process under test runs eqat's code unchanged.
import fs from 'node:fs';
import { syncBuiltinESMExports } from 'node:module';
import { resolve, sep } from 'node:path';

interface Fault {
  code: 'ENOSPC' | 'EROFS' | 'EACCES';
  under: string;
  afterBytes?: number;
}

const ERRNO = { ENOSPC: -28, EROFS: -30, EACCES: -13 } as const;
const TEXT = { ENOSPC: 'no space left on device', EROFS: 'read-only file system', EACCES: 'permission denied' } as const;

const spec = process.env['EQAT_TEST_FS_FAULT'];
if (spec) {
  const parsed = JSON.parse(spec) as Fault | Fault[];
  const faults = (Array.isArray(parsed) ? parsed : [parsed]).map((f) => ({ ...f, under: resolve(f.under), written: 0 }));
  type Armed = (typeof faults)[number];
  /** The fault whose directory holds `p`, if any. */
  const hit = (p: fs.PathLike): Armed | undefined => {
    const r = resolve(String(p));
    return faults.find((f) => r === f.under || r.startsWith(f.under + sep));
  };
  const full = (f: Armed): boolean => f.afterBytes === undefined || f.written >= f.afterBytes;
  /** Counts `n` bytes written under `f`, or fails as its disk would. */
  const take = (f: Armed, n: number, syscall: string, path?: fs.PathLike): void => {
    if (f.afterBytes === undefined || f.written + n > f.afterBytes) fail(f, syscall, path);
    f.written += n;
  };
  const fail = (f: Armed, syscall: string, path?: fs.PathLike): never => {
    const e = new Error(`${f.code}: ${TEXT[f.code]}, ${syscall}${path === undefined ? '' : ` '${String(path)}'`}`) as NodeJS.ErrnoException;
    Object.assign(e, { code: f.code, errno: ERRNO[f.code], syscall }, path === undefined ? {} : { path: String(path) });
    throw e;
  };
  const fds = new Map<number, Armed>();
  const writes = (flags: unknown): boolean => typeof flags === 'string' ? /[wa+]/.test(flags) : typeof flags === 'number' && (flags & 3) !== 0;
  const real = { ...fs };
  const patched: Partial<typeof fs> = {
    openSync: ((path: fs.PathLike, flags?: fs.OpenMode, mode?: fs.Mode) => {
      const f = writes(flags) ? hit(path) : undefined;
      if (f && full(f)) fail(f, 'open', path);
      const fd = real.openSync(path, flags ?? 'r', mode);
      if (f) fds.set(fd, f);
      return fd;
    }) as typeof fs.openSync,
    closeSync: ((fd: number) => {
      fds.delete(fd);
      real.closeSync(fd);
    }) as typeof fs.closeSync,
    writeSync: ((fd: number, buffer: NodeJS.ArrayBufferView | string, ...rest: unknown[]) => {
      const f = fds.get(fd);
      if (f) take(f, typeof buffer === 'string' ? Buffer.byteLength(buffer) : typeof rest[1] === 'number' ? rest[1] : buffer.byteLength, 'write');
      return (real.writeSync as (...a: unknown[]) => number)(fd, buffer, ...rest);
    }) as typeof fs.writeSync,
    writeFileSync: ((path: fs.PathOrFileDescriptor, data: string | NodeJS.ArrayBufferView, opts?: fs.WriteFileOptions) => {
      const f = typeof path !== 'number' ? hit(path) : undefined;
      if (f) take(f, typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength, 'open', path as fs.PathLike);
      real.writeFileSync(path, data, opts);
    }) as typeof fs.writeFileSync,
    appendFileSync: ((path: fs.PathOrFileDescriptor, data: string | Uint8Array, opts?: fs.WriteFileOptions) => {
      const f = typeof path !== 'number' ? hit(path) : undefined;
      if (f) take(f, typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength, 'open', path as fs.PathLike);
      real.appendFileSync(path, data, opts);
    }) as typeof fs.appendFileSync,
    mkdirSync: ((path: fs.PathLike, opts?: fs.MakeDirectoryOptions) => {
      const f = hit(path);
      if (f && !real.existsSync(path) && full(f)) fail(f, 'mkdir', path);
      return real.mkdirSync(path, opts);
    }) as typeof fs.mkdirSync,
    renameSync: ((from: fs.PathLike, to: fs.PathLike) => {
      const f = hit(to) ?? hit(from);
      if (f && f.code !== 'ENOSPC' && full(f)) fail(f, 'rename', from);
      real.renameSync(from, to);
    }) as typeof fs.renameSync,
    linkSync: ((from: fs.PathLike, to: fs.PathLike) => {
      const f = hit(to);
      if (f && full(f)) fail(f, 'link', to);
      real.linkSync(from, to);
    }) as typeof fs.linkSync,
    copyFileSync: ((from: fs.PathLike, to: fs.PathLike, mode?: number) => {
      const f = hit(to);
      if (f && full(f)) fail(f, 'copyfile', to);
      real.copyFileSync(from, to, mode);
    }) as typeof fs.copyFileSync,
  };
  Object.assign(fs, patched);
  syncBuiltinESMExports();
}
