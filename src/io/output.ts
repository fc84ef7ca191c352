// The rules of every output eqat writes (block-ap, e2e-qp, quantize and its OUT.block-ap
// intermediate, export gguf/onnx), in one place, because a run takes hours to days and must
// never destroy a file, mix two runs' data, or leave its lock behind:
//
// - an existing output is refused unless --force; with --force it is replaced only once the new
//   one is complete (`publishOutput`: the old one goes after the new one is in place);
// - nothing is written into an input (the source model directory, the data and recipe files),
//   nor can an output contain one (a --force would remove it);
// - one run at a time per output: `OUT.lock` is created atomically (a complete file linked into
//   place, so it is never seen half-written) and holds pid, process start time
//   (/proc/<pid>/stat), host and command. A second run is refused naming the first; a lock
//   whose process is gone (or whose pid now belongs to a process started at another time) is
//   taken over with a note. The lock goes on success, error, exit and interruption;
// - SIGINT / SIGTERM during a run that calls `interruptionPoint` (Block-AP, E2E-QP) stop it at
//   the next point, unwinding normally, with one line saying what was kept and that rerunning
//   the same command resumes; exit 130 / 143 (`InterruptedError`). An aborted AbortSignal of
//   the run (the library's cancellation) stops it at the same points, keeping the same state
//   (`AbortedError`);
// - a system error on the output (disk full, read-only file system, permission denied) names
//   the path and the way out (`explainSystemError`).
import { closeSync, existsSync, linkSync, mkdirSync, openSync, readdirSync, readFileSync, realpathSync, renameSync, rmdirSync, rmSync, unlinkSync, writeSync } from 'node:fs';
import { hostname } from 'node:os';
import { basename, dirname, join, resolve, sep } from 'node:path';

/** One input of a run, by the flag that names it (a directory or a file). */
export interface OutputInput {
  flag: string;
  path: string;
}

export interface OutputRequest {
  /** The output as given (directory, or a file for GGUF). */
  out: string;
  /** The flag or recipe key that names it, for messages (`--out`). */
  flag: string;
  /** Replace an existing output (once the new one is complete). */
  force: boolean;
  /** The run's inputs: the output may neither be nor lie inside one, nor contain one. */
  inputs: OutputInput[];
  /** The command, recorded in the lock (`eqat block-ap`). */
  command: string;
  /** Other paths the run writes next to the output (OUT.partial, OUT.block-ap ...), checked against the inputs too. */
  companions?: string[];
  /** A rerun of the same command resumes from what the run kept (for the messages of system errors). */
  resumable: boolean;
}

/** An output held by this process for one run. */
export interface OutputClaim {
  /** The output, absolute. */
  readonly out: string;
  readonly flag: string;
  /** The output exists (a --force run): publishOutput replaces it. */
  readonly replaces: boolean;
  readonly resumable: boolean;
  /** What an interruption leaves for a rerun, in words ("blocks 0–2 finished in /x/OUT.partial/"); set by the run as it goes. */
  kept: string;
  /**
   * The output is in place (set by publishOutput). A rerun of the same command then refuses it as
   * an existing output, so an interruption says `kept` is complete and `whatNext` instead of "rerunning
   * resumes".
   */
  published: boolean;
  /** After publishing, what the run still had to do, as a command a person can run ('' when nothing). */
  whatNext: string;
  release(): void;
}

/** SIGINT / SIGTERM stopped the run; the message says what was kept. Exit code 128 + signal number. */
export class InterruptedError extends Error {
  constructor(
    readonly signal: 'SIGINT' | 'SIGTERM',
    kept: string,
  ) {
    super(`interrupted by ${signal}; ${kept}`);
    this.name = 'InterruptedError';
  }

  get exitCode(): number {
    return this.signal === 'SIGINT' ? 130 : 143;
  }
}

/**
 * The run's AbortSignal was aborted: it stopped at its next interruption point, keeping what
 * SIGINT keeps (`kept` says what, in words, as the message does). `name` is 'AbortError', as
 * for fetch and the other abortable APIs of Node; `cause` is the signal's reason.
 */
export class AbortedError extends Error {
  readonly code = 'ABORT_ERR';
  constructor(
    readonly kept: string,
    cause?: unknown,
  ) {
    super(`aborted; ${kept}`, cause === undefined ? undefined : { cause });
    this.name = 'AbortError';
  }
}

/** Throws AbortedError when `signal` is aborted before a run has claimed anything. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new AbortedError('the run had not started; nothing was written', signal.reason);
}

// ---------------------------------------------------------------------------------------------
// Inputs

/** The path with symlinks of its existing part resolved (the rest appended), to compare locations. */
function realish(path: string): string {
  const abs = resolve(path);
  const rest: string[] = [];
  let p = abs;
  for (;;) {
    try {
      return join(realpathSync(p), ...rest.reverse());
    } catch {
      const up = dirname(p);
      if (up === p) return abs;
      rest.push(basename(p));
      p = up;
    }
  }
}

function within(inner: string, outer: string): boolean {
  return inner === outer || inner.startsWith(outer.endsWith(sep) ? outer : outer + sep);
}

/** The problem with writing `written` for a run reading `inputs`, or null. */
function inputProblem(written: string, inputs: OutputInput[]): string | null {
  const w = realish(written);
  for (const { flag, path } of inputs) {
    const i = realish(path);
    if (w === i) return `is the ${flag} input itself`;
    if (within(w, i)) return `lies inside the ${flag} input ${path}`;
    if (within(i, w)) return `contains the ${flag} input ${path}`;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// The lock

interface LockInfo {
  pid: number;
  /** /proc/<pid>/stat starttime (clock ticks since boot), null where /proc is not readable. */
  start: string | null;
  host: string;
  command: string;
  since: string;
}

function processStart(pid: number): string | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // fields after the parenthesised command name: state is field 3, starttime field 22
    return stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19] ?? null;
  } catch {
    return null;
  }
}

function parseLock(text: string): LockInfo | null {
  try {
    const v = JSON.parse(text) as LockInfo;
    return typeof v.pid === 'number' && typeof v.host === 'string' ? v : null;
  } catch {
    return null;
  }
}

/** Whether the run that wrote the lock may still be running (another host's always may). */
function lockIsLive(info: LockInfo, lockPath: string): boolean {
  if (info.host !== hostname()) return true;
  // this process's own lock is live only while one of its claims holds it
  if (info.pid === process.pid && info.start === processStart(process.pid)) return claims.some((c) => c.out + '.lock' === lockPath);
  try {
    process.kill(info.pid, 0);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ESRCH') return false;
  }
  const start = processStart(info.pid);
  return info.start === null || start === null || start === info.start;
}

function describeLock(info: LockInfo): string {
  return `pid ${info.pid}${info.host !== hostname() ? ` on ${info.host}` : ''}, \`${info.command}\`, since ${info.since}`;
}

/** Creates `lockPath` holding `text` atomically, or returns false when it exists. */
function createLock(lockPath: string, text: string): boolean {
  const tmp = `${lockPath}.${process.pid}.tmp`;
  const fd = openSync(tmp, 'w', 0o644);
  try {
    writeSync(fd, text);
  } finally {
    closeSync(fd);
  }
  try {
    linkSync(tmp, lockPath);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw e;
  } finally {
    unlinkSync(tmp);
  }
}

function readText(path: string): string | null {
  try {
    return readFileSync(path, 'utf8');
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw e;
  }
}

/** Takes `lockPath` for this process, taking over a stale one; throws naming a live holder. */
function acquireLock(lockPath: string, flag: string, out: string, command: string): string {
  const mine: LockInfo = { pid: process.pid, start: processStart(process.pid), host: hostname(), command, since: new Date().toISOString() };
  const text = JSON.stringify(mine) + '\n';
  for (let attempt = 0; attempt < 8; attempt++) {
    if (createLock(lockPath, text)) return text;
    const held = readText(lockPath);
    if (held === null) continue; // released meanwhile
    const info = parseLock(held);
    if (info && lockIsLive(info, lockPath)) {
      throw new Error(
        `${flag} ${out}: another eqat run is writing it (${describeLock(info)}); wait for it to finish or stop it, or choose another ${flag}` +
          (info.host !== hostname() ? ` (if that run is gone, remove ${lockPath})` : ''),
      );
    }
    // stale: move it aside, and put it back if what was moved is not what was judged stale
    // (a run that took it over in between holds it now)
    const aside = `${lockPath}.stale.${process.pid}`;
    try {
      renameSync(lockPath, aside);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      throw e;
    }
    const moved = readText(aside);
    if (moved !== held) {
      try {
        linkSync(aside, lockPath);
      } catch {
        // a third run holds it now; the next attempt sees that one
      }
    } else if (info?.pid !== process.pid) {
      process.stderr.write(
        `eqat: note: ${lockPath} was left by a run that is gone (${info ? describeLock(info) : 'unreadable'}); taking it over\n`,
      );
    }
    unlinkSync(aside);
  }
  throw new Error(`${flag} ${out}: could not take the lock ${lockPath} (other runs keep taking it); retry`);
}

// ---------------------------------------------------------------------------------------------
// Claims and signals

const claims: OutputClaim[] = [];
const interruptibleClaims = new Set<OutputClaim>();
let pendingSignal: 'SIGINT' | 'SIGTERM' | null = null;
let hardExitTimer: NodeJS.Timeout | null = null;

/** What the live claims kept, and how to go on. */
function keptMessage(): string {
  const kept = claims.filter((c) => c.kept !== '');
  if (kept.length === 0) return 'nothing was kept; rerunning the same command starts over';
  if (kept.some((c) => c.published)) {
    return kept.map((c) => (c.published ? `kept ${c.kept}, complete${c.whatNext ? `; ${c.whatNext}` : ''}` : `kept ${c.kept}`)).join('; ');
  }
  return `kept ${kept.map((c) => c.kept).join('; ')}; rerunning the same command resumes`;
}

function onSignal(signal: 'SIGINT' | 'SIGTERM'): void {
  if (pendingSignal) return;
  pendingSignal = signal;
  // the run stops at its next interruptionPoint; a run awaiting something else (tokenizing the
  // data) is stopped here after a second
  hardExitTimer = setTimeout(() => {
    const e = new InterruptedError(signal, keptMessage());
    process.stderr.write(`eqat: ${e.message}\n`);
    for (const c of [...claims]) c.release();
    process.exit(e.exitCode);
  }, 1000);
  hardExitTimer.unref();
}
const onSigint = (): void => onSignal('SIGINT');
const onSigterm = (): void => onSignal('SIGTERM');

function releaseAllSync(): void {
  for (const c of [...claims]) c.release();
}

/**
 * A point where a run may stop for SIGINT / SIGTERM: throws InterruptedError (saying what the
 * live claims kept) when one arrived, or AbortedError (the same words) when the run's AbortSignal
 * `abort` is aborted. Yields to the event loop at most every 50 ms, so signals and aborts are seen;
 * call it between training steps.
 */
let lastYield = 0;
export async function interruptionPoint(abort?: AbortSignal): Promise<void> {
  const now = performance.now();
  if (now - lastYield >= 50) {
    lastYield = now;
    await new Promise((r) => setImmediate(r));
  }
  if (pendingSignal) {
    if (hardExitTimer) clearTimeout(hardExitTimer);
    hardExitTimer = null;
    const signal = pendingSignal;
    pendingSignal = null;
    throw new InterruptedError(signal, keptMessage());
  }
  if (abort?.aborted) throw new AbortedError(keptMessage(), abort.reason);
}

/**
 * Claims an output for one run, before any expensive work: refuses an existing one without
 * force, an output that is, lies in or contains an input, and an output another live run holds;
 * then takes its lock. `interruptible` runs also catch SIGINT / SIGTERM while claimed (their
 * loops call interruptionPoint). Release it in a `finally`.
 */
export function claimOutput(req: OutputRequest, { interruptible = false } = {}): OutputClaim {
  const out = resolve(req.out);
  const exists = existsSync(out);
  const never = 'eqat never writes into or over its inputs: choose an output outside them';
  for (const w of [out, ...(req.companions ?? [])]) {
    const problem = inputProblem(w, req.inputs);
    if (problem) {
      const what = w === out ? `${req.flag} ${req.out}` : `${req.flag} ${req.out} (its ${w})`;
      throw new Error(`${what}: ${exists && w === out ? 'already exists and ' : ''}${problem}; ${never}`);
    }
  }
  if (exists && !req.force) {
    throw new Error(`${req.flag} ${req.out}: already exists; choose another path, remove it, or pass --force to replace it once the new one is complete`);
  }
  // the lock needs the output's directory; directories made for it go again if the run leaves nothing
  let made: string | undefined;
  let lockText: string;
  try {
    made = mkdirSync(dirname(out), { recursive: true });
    lockText = acquireLock(out + '.lock', req.flag, req.out, req.command);
  } catch (e) {
    removeEmptyDirs(dirname(out), made);
    throw explainSystemError(e, out, req.resumable);
  }
  let released = false;
  const claim: OutputClaim = {
    out,
    flag: req.flag,
    replaces: exists,
    resumable: req.resumable,
    kept: '',
    published: false,
    whatNext: '',
    release() {
      if (released) return;
      released = true;
      claims.splice(claims.indexOf(claim), 1);
      if (readText(out + '.lock') === lockText) rmSync(out + '.lock', { force: true });
      removeEmptyDirs(dirname(out), made);
      if (claims.length === 0) process.off('exit', releaseAllSync);
      if (interruptibleClaims.delete(claim) && interruptibleClaims.size === 0) {
        process.off('SIGINT', onSigint);
        process.off('SIGTERM', onSigterm);
      }
    },
  };
  if (claims.length === 0) process.on('exit', releaseAllSync);
  claims.push(claim);
  if (interruptible) {
    if (interruptibleClaims.size === 0) {
      pendingSignal = null;
      process.on('SIGINT', onSigint);
      process.on('SIGTERM', onSigterm);
    }
    interruptibleClaims.add(claim);
  }
  return claim;
}

/** Removes `dir` and its parents up to `top` (a directory this run made) while they are empty. */
function removeEmptyDirs(dir: string, top: string | undefined): void {
  if (top === undefined) return;
  for (let d = dir; within(d, top); d = dirname(d)) {
    try {
      rmdirSync(d);
    } catch {
      return; // not empty: the run left something there
    }
    if (d === top) return;
  }
}

/**
 * Makes the finished `built` (a complete directory or file next to the output) the output:
 * a rename; an output being replaced (--force) is moved aside first and removed after.
 */
/**
 * Removes the temporary files a killed writer leaves in `dir` (`x.tmp` of the JSON and log
 * writers, `.x.tmp-<pid>-<time>-<n>` of writeSafetensors), so that neither a resumed run nor the
 * published output carries them.
 */
export function removeTemporaries(dir: string): void {
  for (const f of readdirSync(dir)) if (f.endsWith('.tmp') || /\.tmp-\d+-\d+-\d+$/.test(f)) rmSync(join(dir, f), { force: true });
}

export function publishOutput(claim: OutputClaim, built: string): void {
  if (!claim.replaces || !existsSync(claim.out)) {
    renameSync(built, claim.out);
    claim.published = true;
    return;
  }
  const aside = `${claim.out}.replaced.${process.pid}`;
  renameSync(claim.out, aside);
  renameSync(built, claim.out);
  claim.published = true;
  rmSync(aside, { recursive: true, force: true });
}

// ---------------------------------------------------------------------------------------------
// System errors

/** Per error code: what happened, the fix in place, and the way around it. */
const WAY_OUT: Record<string, { what: string; fix: string; elsewhere: string }> = {
  ENOSPC: { what: 'no space left on device', fix: 'free space there', elsewhere: 'choose an output on another disk' },
  EDQUOT: { what: 'disk quota exceeded', fix: 'free space there', elsewhere: 'choose an output on another disk' },
  EROFS: { what: 'read-only file system', fix: 'make it writable', elsewhere: 'choose an output on a writable file system' },
  EACCES: { what: 'permission denied', fix: 'change its permissions', elsewhere: 'choose an output you may write to' },
  EPERM: { what: 'operation not permitted', fix: 'change its permissions', elsewhere: 'choose an output you may write to' },
};

/** A disk-full, read-only or permission error in words: the path it names, what happened, the fix in place; null for other errors. */
export function describeSystemError(e: unknown): { path: string | undefined; what: string; fix: string; elsewhere: string } | null {
  const err = e as NodeJS.ErrnoException;
  const way = err && typeof err.code === 'string' ? WAY_OUT[err.code] : undefined;
  return way ? { path: err.path, ...way } : null;
}

/**
 * A disk-full, read-only or permission error in writing `output` (a path, or any path that
 * starts with it: OUT.partial/, OUT.lock ...) as a message naming the path (the error's own,
 * else `output`) and the ways out; `resumable` says that the same command resumes once the fix is
 * made (another output starts over), `hint` adds a last word (the activation cache's --max-ram).
 * Other errors (reading an input) come back unchanged.
 */
export function explainSystemError(e: unknown, output: string, resumable: boolean, hint?: string): unknown {
  const err = e as NodeJS.ErrnoException;
  const way = describeSystemError(e);
  if (!way || err.name === 'OutputSystemError') return e;
  if (way.path !== undefined && !resolve(way.path).startsWith(output)) return e;
  const path = way.path ?? output;
  const parts = [
    resumable
      ? `cannot write ${path}: ${way.what}; ${way.fix} and rerun the same command: it resumes from what was finished, or ${way.elsewhere} and start over`
      : `cannot write ${path}: ${way.what}; ${way.fix} or ${way.elsewhere}`,
  ];
  if (hint) parts.push(hint);
  const out = new Error(parts.join('; ')) as NodeJS.ErrnoException;
  out.name = 'OutputSystemError';
  out.code = err.code;
  return out;
}
