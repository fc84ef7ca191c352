// The CUDA kernel emulator's runner process (test/cuda/emu/runner.h holds its side): started
// once per EmulatorBackend and kept for every launch after. Node writes each launch request to
// one FIFO and blocks on a read of another for the one-line reply, so a launch costs two pipe
// transfers of a few hundred bytes instead of a process start and a copy of its buffers (the
// device memory file is shared, see memory.ts).
//
// FIFOs rather than the child's stdio pipes because Node's are non-blocking: reads on FIFOs that
// Node opens itself block. Each FIFO is opened read-write once for the child (which never blocks
// on Linux) and with Node's own direction; after the spawn Node closes the child's copies, so
// that the runner's exit (a fault, a failed barrier check, a kill) closes the reply FIFO's only
// writer and Node's read ends instead of waiting forever. The runner's error text goes to an
// unlinked file Node reads back when that happens. The runner dies with Node (PR_SET_PDEATHSIG),
// and is stopped by stop() or when Node exits.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { closeSync, constants, fstatSync, mkdtempSync, openSync, readSync, rmSync, writeSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { GRANULE, REGION_BASE, REGION_BYTES } from './memory.js';

const running = new Set<RunnerProcess>();
let exitHookInstalled = false;

export class RunnerProcess {
  private constructor(
    private readonly child: ChildProcess,
    private readonly requests: number,
    private readonly replies: number,
    private readonly errors: number,
  ) {}

  /** Starts the runner program `exe` on the device memory file open as `memoryFd`. */
  static start(exe: string, memoryFd: number): RunnerProcess {
    const dir = mkdtempSync(join(tmpdir(), 'eqat-cuda-emu-fifo-'));
    const opened: number[] = [];
    const open = (path: string, flags: number | string): number => {
      const fd = openSync(path, flags, 0o600);
      opened.push(fd);
      return fd;
    };
    try {
      const requestPath = join(dir, 'requests'), replyPath = join(dir, 'replies');
      const mk = spawnSync('mkfifo', ['-m', '600', requestPath, replyPath], { encoding: 'utf8' });
      if (mk.status !== 0) throw new Error(`mkfifo failed: ${mk.error?.message ?? mk.stderr}`);
      const childRequests = open(requestPath, constants.O_RDWR);
      const requests = open(requestPath, constants.O_WRONLY);
      const childReplies = open(replyPath, constants.O_RDWR);
      const replies = open(replyPath, constants.O_RDONLY);
      const errors = open(join(dir, 'errors'), 'w+');
      const args = [REGION_BASE.toString(16), REGION_BYTES.toString(16), GRANULE.toString(16), String(process.pid)];
      const child = spawn(exe, args, {
        stdio: ['ignore', 'ignore', errors, childRequests, childReplies, memoryFd],
      });
      child.on('error', () => {}); // a failed start is thrown below; the event would be unhandled
      if (child.pid === undefined) throw new Error(`cannot start the CUDA kernel emulator's runner ${exe}`);
      child.unref();
      closeSync(childRequests);
      closeSync(childReplies);
      const runner = new RunnerProcess(child, requests, replies, errors);
      running.add(runner);
      if (!exitHookInstalled) {
        exitHookInstalled = true;
        process.on('exit', () => {
          for (const r of running) r.stop();
        });
      }
      return runner;
    } catch (e) {
      for (const fd of opened) {
        try {
          closeSync(fd);
        } catch {
          // already closed above
        }
      }
      throw e;
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  /**
   * Sends one request and waits for its reply: undefined when the launch ran, else the
   * runner's error text (the runner has then exited and this object is stopped).
   */
  run(request: Uint8Array): string | undefined {
    try {
      for (let done = 0; done < request.byteLength; ) done += writeSync(this.requests, request, done, request.byteLength - done);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'EPIPE') throw e;
      return this.died('the runner had exited before the launch');
    }
    const reply = Buffer.alloc(64);
    let got = 0;
    while (got < reply.length) {
      let n: number;
      try {
        n = readSync(this.replies, reply, got, reply.length - got, null);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        if (code === 'EINTR' || code === 'EAGAIN') continue;
        throw e;
      }
      if (n === 0) return this.died('the runner ended without a message');
      got += n;
      if (reply[got - 1] === 0x0a) break;
    }
    const line = reply.subarray(0, got).toString('utf8');
    return line === 'ok\n' ? undefined : this.died(`unexpected reply ${JSON.stringify(line)}`);
  }

  /** The runner's error text (or `fallback` where it wrote none), after stopping it. */
  private died(fallback: string): string {
    const bytes = fstatSync(this.errors).size;
    const text = Buffer.alloc(bytes);
    if (bytes > 0) readSync(this.errors, text, 0, bytes, 0);
    this.stop();
    return text.toString('utf8').trim() || fallback;
  }

  /** Ends the runner (end of its request FIFO, and a kill) and closes Node's ends. */
  stop(): void {
    if (!running.delete(this)) return;
    for (const fd of [this.requests, this.replies, this.errors]) closeSync(fd);
    this.child.kill('SIGKILL');
  }
}
