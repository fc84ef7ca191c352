// Reference twin of the packed low-bit linear layer (src/quant/packed-linear.ts), slow and
// obvious: unpack the codes with unpackQweight, dequantize the whole matrix with
// primitives.dequantize (which clamps the scales to [1e-4, 1e4]), then multiply with matmulRef
// (f64 accumulation). The scale gradient forms dW_hat = doutᵀ x whole and reduces it with
// (q − z) per group in f64; the scale clamp is straight-through (dscales is not masked).
// Same signatures and argument checks as the native wrappers.
import { Tensor } from '../../engine/tensor.js';
import { matmulRef } from '../../ops/ref/matmul.js';
import { unpackQweight } from '../gptq-pack.js';
import { dequantize } from '../primitives.js';
import { dequantizeShapes, packedBackwardShapes, packedForwardShapes, type PackedWeight } from '../packed-linear.js';

/** W_hat (O, I) as a new tensor. */
function dequantizedWeight(w: PackedWeight, scales: Tensor): Tensor {
  const q = unpackQweight(w.qweight, w.O, w.I, w.bits); // (O, I)
  const zeros = Float32Array.from(w.zeros); // (O, I/G), integers
  return Tensor.fromF32(dequantize(q, scales.f32, zeros, w.O, w.I, w.bits, w.G), [w.O, w.I]);
}

export function dequantizePackedRef(out: Tensor /* (O, I) */, w: PackedWeight, scales: Tensor /* (O, I/G) */): void {
  dequantizeShapes('dequantizePackedRef', out, w, scales);
  out.f32.set(dequantizedWeight(w, scales).f32);
}

export function packedLinearForwardRef(
  out: Tensor, // (N, O)
  x: Tensor, // (N, I)
  w: PackedWeight,
  scales: Tensor, // (O, I/G)
  bias?: Tensor | null, // (O)
): void {
  const N = packedForwardShapes('packedLinearForwardRef', out, x, w, scales, bias);
  const o2 = out.view([N, w.O]);
  matmulRef(o2, x.view([N, w.I]), dequantizedWeight(w, scales), { transB: true });
  if (bias) {
    const y = o2.f32;
    const b = bias.f32;
    for (let n = 0; n < N; n++) for (let o = 0; o < w.O; o++) y[n * w.O + o] = Math.fround(y[n * w.O + o]! + b[o]!);
  }
}

export function packedLinearBackwardRef(
  dx: Tensor | null, // (N, I)
  dscales: Tensor | null, // (O, I/G) +=
  dout: Tensor, // (N, O)
  x: Tensor, // (N, I)
  w: PackedWeight,
  scales: Tensor, // (O, I/G)
  accumulateDx = false,
): void {
  const N = packedBackwardShapes('packedLinearBackwardRef', dx, dscales, dout, x, w, scales, accumulateDx);
  const { O, I, G } = w;
  const d2 = dout.view([N, O]);
  if (dx) matmulRef(dx.view([N, I]), d2, dequantizedWeight(w, scales), { beta: accumulateDx ? 1 : 0 });
  if (dscales) {
    const dW = Tensor.zeros([O, I]); // dW_hat = doutᵀ x
    matmulRef(dW, d2, x.view([N, I]), { transA: true });
    const q = unpackQweight(w.qweight, O, I, w.bits); // (O, I)
    const groups = I / G;
    const ds = dscales.f32;
    for (let o = 0; o < O; o++) {
      for (let g = 0; g < groups; g++) {
        const z = w.zeros[o * groups + g]!;
        let s = 0;
        for (let i = g * G; i < (g + 1) * G; i++) s += (q[o * I + i]! - z) * dW.f32[o * I + i]!;
        ds[o * groups + g] = Math.fround(ds[o * groups + g]! + s);
      }
    }
  }
}
