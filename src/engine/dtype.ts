// Element types of eqat tensors and the f16/bf16 <-> f32 conversions (TypeScript reference;
// the fast path is native/cpu/convert.cc, reached through toF32()/fromF32()).
import { nativeFn } from './native.js';

export type DType = 'f32' | 'f16' | 'bf16' | 'i32' | 'u8';

export type StorageOf<D extends DType> = D extends 'f32'
  ? Float32Array
  : D extends 'f16' | 'bf16'
    ? Uint16Array
    : D extends 'i32'
      ? Int32Array
      : Uint8Array;

export type Storage = Float32Array | Uint16Array | Int32Array | Uint8Array;

export const BYTES_PER_ELEMENT: Record<DType, number> = { f32: 4, f16: 2, bf16: 2, i32: 4, u8: 1 };

export function allocStorage(dtype: DType, n: number): Storage {
  switch (dtype) {
    case 'f32':
      return new Float32Array(n);
    case 'f16':
    case 'bf16':
      return new Uint16Array(n);
    case 'i32':
      return new Int32Array(n);
    case 'u8':
      return new Uint8Array(n);
  }
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

export function bf16ToF32Ref(h: number): number {
  u32buf[0] = h << 16;
  return f32buf[0]!;
}

export function f32ToBf16Ref(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0]!;
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

export function f16ToF32Ref(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const man = h & 0x3ff;
  if (exp === 0) return sign * man * 2 ** -24;
  if (exp === 31) return man ? NaN : sign * Infinity;
  return sign * (1 + man / 1024) * 2 ** (exp - 15);
}

export function f32ToF16Ref(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0]!;
  const sign = (u >>> 16) & 0x8000;
  const absu = u & 0x7fffffff;
  if (absu > 0x7f800000) return sign | 0x7e00;
  if (absu >= 0x477ff000) return sign | 0x7c00;
  if (absu < 0x38800000) {
    f32buf[0] = Math.abs(f32buf[0]!);
    const scaled = f32buf[0]! * 16777216;
    // round half to even
    let m = Math.floor(scaled);
    const frac = scaled - m;
    if (frac > 0.5 || (frac === 0.5 && m % 2 === 1)) m += 1;
    return sign | m;
  }
  let h = (((absu >>> 23) - 112) << 10) | ((absu & 0x7fffff) >>> 13);
  const rem = absu & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h += 1;
  return sign | h;
}

type ConvertTo = (kind: number, src: Uint16Array, dst: Float32Array, n: number) => void;
type ConvertFrom = (kind: number, src: Float32Array, dst: Uint16Array, n: number) => void;

/** Converts f16/bf16 storage to f32 (native, threaded). */
export function toF32(kind: 'f16' | 'bf16', src: Uint16Array, dst: Float32Array = new Float32Array(src.length)): Float32Array {
  if (dst.length < src.length) throw new RangeError(`toF32: dst has ${dst.length} elements, needs ${src.length}`);
  nativeFn<ConvertTo>('convertToF32')(kind === 'f16' ? 0 : 1, src, dst, src.length);
  return dst;
}

/** Converts f32 to f16/bf16 storage with round-to-nearest-even (native, threaded). */
export function fromF32(kind: 'f16' | 'bf16', src: Float32Array, dst: Uint16Array = new Uint16Array(src.length)): Uint16Array {
  if (dst.length < src.length) throw new RangeError(`fromF32: dst has ${dst.length} elements, needs ${src.length}`);
  nativeFn<ConvertFrom>('convertFromF32')(kind === 'f16' ? 0 : 1, src, dst, src.length);
  return dst;
}
