// A file-system fault for the fault-injection tests, loaded into an eqat process with
// `node --import dist/test/fault/fs-fault.js` and armed by EQAT_TEST_FS_FAULT (set only by the
// tests): JSON {"code": "ENOSPC" | "EROFS" | "EACCES", "under": "/dir", "afterBytes"?: n}.
// Every write under `under` fails with `code` (for ENOSPC, only once `afterBytes` bytes went
// there): opening a file for writing, writes to such a file, mkdir, rename / link / copy to it.
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
  const fault = JSON.parse(spec) as Fault;
  const under = resolve(fault.under);
  const hit = (p: fs.PathLike): boolean => {
    const r = resolve(String(p));
    return r === under || r.startsWith(under + sep);
  };
  let written = 0;
  const full = (): boolean => fault.afterBytes === undefined || written >= fault.afterBytes;
  const fail = (syscall: string, path?: fs.PathLike): never => {
    const e = new Error(`${fault.code}: ${TEXT[fault.code]}, ${syscall}${path === undefined ? '' : ` '${String(path)}'`}`) as NodeJS.ErrnoException;
    Object.assign(e, { code: fault.code, errno: ERRNO[fault.code], syscall }, path === undefined ? {} : { path: String(path) });
    throw e;
  };
  const fds = new Set<number>();
  const writes = (flags: unknown): boolean => typeof flags === 'string' ? /[wa+]/.test(flags) : typeof flags === 'number' && (flags & 3) !== 0;
  const real = { ...fs };
  const patched: Partial<typeof fs> = {
    openSync: ((path: fs.PathLike, flags?: fs.OpenMode, mode?: fs.Mode) => {
      if (hit(path) && writes(flags) && (fault.code !== 'ENOSPC' || full())) fail('open', path);
      const fd = real.openSync(path, flags ?? 'r', mode);
      if (hit(path) && writes(flags)) fds.add(fd);
      return fd;
    }) as typeof fs.openSync,
    closeSync: ((fd: number) => {
      fds.delete(fd);
      real.closeSync(fd);
    }) as typeof fs.closeSync,
    writeSync: ((fd: number, buffer: NodeJS.ArrayBufferView | string, ...rest: unknown[]) => {
      if (fds.has(fd)) {
        const n = typeof buffer === 'string' ? Buffer.byteLength(buffer) : typeof rest[1] === 'number' ? rest[1] : buffer.byteLength;
        if (fault.code !== 'ENOSPC' || written + n > (fault.afterBytes ?? 0)) fail('write');
        written += n;
      }
      return (real.writeSync as (...a: unknown[]) => number)(fd, buffer, ...rest);
    }) as typeof fs.writeSync,
    writeFileSync: ((path: fs.PathOrFileDescriptor, data: string | NodeJS.ArrayBufferView, opts?: fs.WriteFileOptions) => {
      if (typeof path !== 'number' && hit(path)) {
        const n = typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
        if (fault.code !== 'ENOSPC' || written + n > (fault.afterBytes ?? 0)) fail('open', path);
        written += n;
      }
      real.writeFileSync(path, data, opts);
    }) as typeof fs.writeFileSync,
    appendFileSync: ((path: fs.PathOrFileDescriptor, data: string | Uint8Array, opts?: fs.WriteFileOptions) => {
      if (typeof path !== 'number' && hit(path)) {
        const n = typeof data === 'string' ? Buffer.byteLength(data) : data.byteLength;
        if (fault.code !== 'ENOSPC' || written + n > (fault.afterBytes ?? 0)) fail('open', path);
        written += n;
      }
      real.appendFileSync(path, data, opts);
    }) as typeof fs.appendFileSync,
    mkdirSync: ((path: fs.PathLike, opts?: fs.MakeDirectoryOptions) => {
      if (hit(path) && !real.existsSync(path) && (fault.code !== 'ENOSPC' || full())) fail('mkdir', path);
      return real.mkdirSync(path, opts);
    }) as typeof fs.mkdirSync,
    renameSync: ((from: fs.PathLike, to: fs.PathLike) => {
      if ((hit(to) || hit(from)) && fault.code !== 'ENOSPC') fail('rename', from);
      real.renameSync(from, to);
    }) as typeof fs.renameSync,
    linkSync: ((from: fs.PathLike, to: fs.PathLike) => {
      if (hit(to) && (fault.code !== 'ENOSPC' || full())) fail('link', to);
      real.linkSync(from, to);
    }) as typeof fs.linkSync,
    copyFileSync: ((from: fs.PathLike, to: fs.PathLike, mode?: number) => {
      if (hit(to) && (fault.code !== 'ENOSPC' || full())) fail('copyfile', to);
      real.copyFileSync(from, to, mode);
    }) as typeof fs.copyFileSync,
  };
  Object.assign(fs, patched);
  syncBuiltinESMExports();
}
