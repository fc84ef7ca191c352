// Shared test helpers: seeded random tensors, closeness assertions with a readable report,
// finite-difference gradient checks, and the list of devices to run each op spec on.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { Rng } from '../src/engine/random.js';
import { Tensor } from '../src/engine/tensor.js';

export function randn(rng: Rng, shape: readonly number[], std = 1): Tensor {
  const t = Tensor.zeros(shape);
  rng.fillNormal(t.f32, std);
  return t;
}

export function randu(rng: Rng, shape: readonly number[], lo = -1, hi = 1): Tensor {
  const t = Tensor.zeros(shape);
  rng.fillUniform(t.f32, lo, hi);
  return t;
}

/** Asserts |a - b| <= atol + rtol * |b| elementwise; reports the worst element. */
export function assertClose(
  actual: ArrayLike<number>,
  expected: ArrayLike<number>,
  { atol = 1e-5, rtol = 1e-5, what = 'value' }: { atol?: number; rtol?: number; what?: string } = {},
): void {
  assert.equal(actual.length, expected.length, `${what}: length ${actual.length} != ${expected.length}`);
  let worst = -1;
  let worstExcess = 0;
  for (let i = 0; i < actual.length; i++) {
    const a = actual[i]!;
    const b = expected[i]!;
    const excess = Math.abs(a - b) - (atol + rtol * Math.abs(b));
    if (!(excess <= 0) && (worst < 0 || !(excess <= worstExcess))) {
      worst = i;
      worstExcess = excess;
      if (Number.isNaN(excess)) break;
    }
  }
  if (worst >= 0) {
    assert.fail(`${what}: element ${worst}: got ${actual[worst]}, expected ${expected[worst]} (atol ${atol}, rtol ${rtol})`);
  }
}

/**
 * Central finite-difference gradient of a scalar function f with respect to x, at up to
 * `samples` randomly chosen coordinates (all when x is small). Returns [indices, numeric grads].
 */
export function finiteDiff(
  f: () => number,
  x: Float32Array,
  { eps = 1e-3, samples = 24, rng = new Rng(7) }: { eps?: number; samples?: number; rng?: Rng } = {},
): [number[], number[]] {
  const idx: number[] = [];
  if (x.length <= samples) for (let i = 0; i < x.length; i++) idx.push(i);
  else for (let k = 0; k < samples; k++) idx.push(rng.int(0, x.length));
  const grads = idx.map((i) => {
    const old = x[i]!;
    x[i] = old + eps;
    const fp = f();
    x[i] = old - eps;
    const fm = f();
    x[i] = old;
    return (fp - fm) / (2 * eps);
  });
  return [idx, grads];
}

/** Compares an analytic gradient with central differences of f at sampled coordinates. */
export function checkGrad(
  f: () => number,
  x: Float32Array,
  analytic: Float32Array,
  { eps = 1e-3, atol = 1e-3, rtol = 1e-2, samples = 24, what = 'grad' }: {
    eps?: number;
    atol?: number;
    rtol?: number;
    samples?: number;
    what?: string;
  } = {},
): void {
  const [idx, numeric] = finiteDiff(f, x, { eps, samples });
  assertClose(
    idx.map((i) => analytic[i]!),
    numeric,
    { atol, rtol, what: `${what} vs finite differences` },
  );
}

/** Odd and ordinary sizes for shape sweeps: not multiples of 8/16/32, and 1. */
export const ODD_SIZES = [1, 3, 7, 17, 33, 65] as const;

/**
 * Runs `node ...args` in a child process; with killWhen, SIGKILLs it as soon as killWhen() holds
 * (polled every 2 ms). Resolves the exit code, or the signal's name when killed; rejects with
 * its stderr when it fails on its own. For the interrupted-run (resume) tests.
 */
export function runKillable(args: string[], opts: { killWhen?: () => boolean; env?: NodeJS.ProcessEnv } = {}): Promise<number | string> {
  return new Promise((resolveP, reject) => {
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'ignore', 'pipe'], env: opts.env ?? process.env });
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    const { killWhen } = opts;
    const timer = killWhen
      ? setInterval(() => {
          if (killWhen()) {
            child.kill('SIGKILL');
            clearInterval(timer);
          }
        }, 2)
      : undefined;
    child.on('error', reject);
    child.on('exit', (code, signal) => {
      if (timer) clearInterval(timer);
      if (code !== 0 && !signal) reject(new Error(`node ${args.slice(0, 2).join(' ')} exited ${code}: ${stderr}`));
      resolveP(signal ?? code!);
    });
  });
}
