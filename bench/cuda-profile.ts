// Op-by-op device time for the CUDA benchmarks: a backend wrapper that synchronizes around every
// kernel launch and cuBLASLt GEMM and adds the wall time to a per-op total (kernel name, or GEMM
// shape and types). Graph capture is refused while it is installed, so every step runs eagerly.
// Each op's figure includes one launch and one synchronization (a few microseconds), so short
// kernels read long; the totals are for finding where a step spends its time, not for ms/step.
import { nativeCudaBackend, setCudaBackend, type CudaBackend, type GemmArgs } from '../src/engine/cuda.js';

export interface OpTotal {
  op: string;
  calls: number;
  ms: number;
}

const now = () => Number(process.hrtime.bigint()) / 1e6;

function gemmLabel(g: GemmArgs): string {
  const batch = g.batch ? ` ×${g.batch.count}` : '';
  return `gemm m${g.m} n${g.n} k${g.k} ${g.opA ? 'T' : 'N'}${g.opB ? 'T' : 'N'} ${g.abType}->${g.cType}${g.beta !== 0 ? ' +C' : ''}${batch}`;
}

/** Installs the profiling backend; returns the totals' reader and a reset. */
export function installCudaProfiler(): { totals(): OpTotal[]; reset(): void } {
  const inner: CudaBackend = nativeCudaBackend();
  const names = new Map<bigint, string>();
  const acc = new Map<string, OpTotal>();
  const timed = (op: string, fn: () => void) => {
    inner.synchronize();
    const t0 = now();
    fn();
    inner.synchronize();
    const e = acc.get(op) ?? { op, calls: 0, ms: 0 };
    e.calls++;
    e.ms += now() - t0;
    acc.set(op, e);
  };
  const wrapped: CudaBackend = {
    ...inner,
    name: 'native (profiled)',
    getFunction(module, name) {
      const fn = inner.getFunction(module, name);
      names.set(fn, name);
      return fn;
    },
    launch(fn, grid, block, shared, args) {
      timed(names.get(fn) ?? 'kernel?', () => inner.launch(fn, grid, block, shared, args));
    },
    gemm(g) {
      timed(gemmLabel(g), () => inner.gemm(g));
    },
    memset0(h, bytes) {
      timed('memset0', () => inner.memset0(h, bytes));
    },
    graphSupport: () => 'the op profiler is installed',
  };
  setCudaBackend(wrapped);
  return {
    totals: () => [...acc.values()].sort((a, b) => b.ms - a.ms),
    reset: () => acc.clear(),
  };
}

/** Prints the totals per step as a Markdown table, largest first. */
export function printProfile(totals: OpTotal[], steps: number): void {
  const all = totals.reduce((s, t) => s + t.ms, 0);
  console.log(`# op-by-op (synchronized) device time per step, ${steps} steps: ${(all / steps).toFixed(2)} ms in ops`);
  console.log('| op | calls/step | ms/step | share |');
  console.log('|---|---|---|---|');
  for (const t of totals) {
    console.log(`| ${t.op} | ${t.calls / steps} | ${(t.ms / steps).toFixed(3)} | ${((100 * t.ms) / all).toFixed(1)}% |`);
  }
}
