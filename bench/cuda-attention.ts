// Causal attention alone on CUDA, per implementation, at a model's attention shape: the GEMM
// path (src/ops/cuda/attention-gemm.ts, bf16), the tensor-core kernels (attention-tc.ts) and,
// unless --no-flash, the scalar flash kernels (attention.ts). Milliseconds per forward and per
// backward (medians of --iters calls, each call synchronised), TFLOP/s, and the largest
// difference of each path's out from the GEMM path's as a sanity figure (both round their
// products to bf16, so they differ by bf16 rounding, not by more).
//
// usage: node dist/bench/cuda-attention.js [--shape 7b|70b|small] [--batch B] [--seqlen T] [--iters N] [--no-flash]
// FLOPs: forward 2 · B · H · T² · D (QKᵀ and PV over the lower triangle), backward 2.5 × that.
// Exits 0 with a message where no CUDA device is usable.
import { allocDevice, downloadDevice, freeDevice, synchronizeCuda, uploadDevice, type DeviceArray } from '../src/engine/cuda.js';
import { Rng } from '../src/engine/random.js';
import { attentionBackwardCuda, attentionForwardCuda, type AttentionShape } from '../src/ops/cuda/attention.js';
import { AttentionGemmScratch, attentionGemmBackwardCuda, attentionGemmForwardCuda } from '../src/ops/cuda/attention-gemm.js';
import { AttentionTcScratch, attentionTcBackwardCuda, attentionTcForwardCuda, attentionTcUnsupported } from '../src/ops/cuda/attention-tc.js';
import { cudaDeviceOrSkip, flagValue, shapeConfig } from './shapes.js';

const argv = process.argv.slice(2);
const shapeName = flagValue(argv, '--shape', '7b');
const B = Number(flagValue(argv, '--batch', '2'));
const T = Number(flagValue(argv, '--seqlen', '2048'));
const iters = Number(flagValue(argv, '--iters', '10'));
const cfg = shapeConfig(shapeName, T, 'bench/cuda-attention');
const shape: AttentionShape = { B, Tq: T, Tk: T, H: cfg.numHeads, Hkv: cfg.numKvHeads, D: cfg.headDim };

const dev = cudaDeviceOrSkip('bench/cuda-attention');

interface Path {
  name: string;
  forward(): void;
  backward(): void;
  free(): void;
}

const nq = B * T * shape.H * shape.D, nkv = B * T * shape.Hkv * shape.D;
const rng = new Rng(3);
const upload = (n: number): DeviceArray => {
  const host = new Float32Array(n);
  rng.fillNormal(host, 1);
  const a = allocDevice('f32', n);
  uploadDevice(a, host);
  return a;
};
const q = upload(nq), k = upload(nkv), v = upload(nkv), dout = upload(nq);
const out = allocDevice('f32', nq), lse = allocDevice('f32', B * shape.H * T);
const dq = allocDevice('f32', nq), dk = allocDevice('f32', nkv), dv = allocDevice('f32', nkv);

const paths: Path[] = [];
const gemm = new AttentionGemmScratch(shape, 'bf16');
paths.push({
  name: 'gemm (bf16)',
  forward: () => attentionGemmForwardCuda(out, lse, q, k, v, shape, {}, gemm),
  backward: () => attentionGemmBackwardCuda(dq, dk, dv, dout, q, k, v, out, lse, shape, {}, gemm),
  free: () => gemm.free(),
});
const tcWhy = attentionTcUnsupported(shape);
if (tcWhy === null) {
  const tc = new AttentionTcScratch(shape);
  paths.push({
    name: 'tensor-core kernels',
    forward: () => attentionTcForwardCuda(out, lse, q, k, v, shape),
    backward: () => attentionTcBackwardCuda(dq, dk, dv, dout, q, k, v, out, lse, shape, {}, tc),
    free: () => tc.free(),
  });
} else console.log(`# tensor-core kernels skipped: ${tcWhy}`);
if (!argv.includes('--no-flash')) {
  paths.push({
    name: 'flash kernels (scalar)',
    forward: () => attentionForwardCuda(out, lse, q, k, v, shape),
    backward: () => attentionBackwardCuda(dq, dk, dv, dout, q, k, v, out, lse, shape),
    free: () => {},
  });
}

/** Median milliseconds of `iters` synchronised calls of f, after one warm-up call. */
function time(f: () => void): number {
  f();
  synchronizeCuda();
  const ms: number[] = [];
  for (let i = 0; i < iters; i++) {
    const t0 = performance.now();
    f();
    synchronizeCuda();
    ms.push(performance.now() - t0);
  }
  ms.sort((a, b) => a - b);
  return ms[Math.floor(ms.length / 2)]!;
}

const fwdFlops = 2 * B * shape.H * T * T * shape.D;
console.log(
  `# causal attention on CUDA: ${shapeName} shape, batch ${B} × ${T}, H ${shape.H}, Hkv ${shape.Hkv}, D ${shape.D} (${dev.name}), ${new Date().toISOString()}`,
);
console.log('| path | forward ms | TFLOP/s | backward ms | TFLOP/s | max abs diff of out from the GEMM path |');
console.log('|---|---|---|---|---|---|');
let reference: Float32Array | null = null;
try {
  for (const p of paths) {
    const f = time(p.forward);
    const outNow = downloadDevice<Float32Array>(out);
    let diff = 0;
    if (reference === null) reference = outNow;
    else for (let i = 0; i < outNow.length; i++) diff = Math.max(diff, Math.abs(outNow[i]! - reference[i]!));
    const b = time(p.backward);
    const tf = (flops: number, ms: number) => (flops / (ms / 1000) / 1e12).toFixed(1);
    console.log(`| ${p.name} | ${f.toFixed(3)} | ${tf(fwdFlops, f)} | ${b.toFixed(3)} | ${tf(2.5 * fwdFlops, b)} | ${diff.toExponential(2)} |`);
  }
} finally {
  for (const p of paths) p.free();
  for (const a of [q, k, v, dout, out, lse, dq, dk, dv]) freeDevice(a);
}
