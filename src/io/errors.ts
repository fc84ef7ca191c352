// Errors raised while reading or writing checkpoint files (safetensors, config.json,
// tokenizer.json). Every message starts with the path of the offending file or directory,
// so a user who points eqat at a broken download sees at once which file is wrong and why;
// and the check of an input path given on the command line, which names the flag too.
import { accessSync, constants, statSync, type Stats } from 'node:fs';

/** A file or directory whose contents are missing, malformed or unsupported. */
export class CheckpointError extends Error {
  /** The file or directory the problem was found in. */
  readonly path: string;

  constructor(path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = 'CheckpointError';
    this.path = path;
  }
}

/** Short human description of a JSON value's type, for "expected X, got Y" messages. */
export function describeJson(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  return `${typeof v} ${String(v)}`;
}

/** True for a plain JSON object (not null, not an array). */
export function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/**
 * Refuses an input path before any work, naming the flag (or recipe key) and the path, and what
 * to do: missing, the wrong kind (a directory where a file is wanted, or the reverse) or
 * unreadable. `kind` says which is wanted, `expected` how to describe it ("a .txt, .jsonl or
 * .parquet file").
 */
export function checkInputPath(flag: string, path: string, kind: 'file' | 'directory', expected: string): void {
  const fail = (problem: string): never => {
    throw new Error(`${flag} ${path}: ${problem}`);
  };
  let st: Stats;
  try {
    st = statSync(path);
  } catch (e) {
    const code = (e as NodeJS.ErrnoException).code;
    if (code === 'ENOENT' || code === 'ENOTDIR') return fail(`does not exist; pass ${expected}`);
    if (code === 'EACCES') return fail(`cannot be reached (permission denied on a directory above it); fix the permissions or pass ${expected} elsewhere`);
    return fail(`cannot be read (${(e as Error).message})`);
  }
  if (kind === 'file' && st.isDirectory()) fail(`is a directory; pass ${expected}`);
  if (kind === 'file' && !st.isFile()) fail(`is not a regular file; pass ${expected}`);
  if (kind === 'directory' && !st.isDirectory()) fail(`is not a directory; pass ${expected}`);
  try {
    accessSync(path, kind === 'file' ? constants.R_OK : constants.R_OK | constants.X_OK);
  } catch {
    fail(`cannot be read (permission denied); fix its permissions (chmod) or run as a user who may read it`);
  }
}
