// Tensor: a shape, an element type and a flat row-major host storage.
//
// CPU tensors keep their elements in a JS typed array (which may be a view into a larger
// arena: see Arena), so native kernels read and write them in place without copies.
// Ops never allocate their outputs: callers allocate once (weights, gradients, optimiser
// state, activations) and pass outputs in, as llm.c does.
import { allocStorage, type DType, type Storage } from './dtype.js';

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new RangeError(`invalid shape [${shape.join(', ')}]`);
    n *= d;
  }
  return n;
}

export class Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
  readonly data: Storage;

  constructor(shape: readonly number[], dtype: DType, data: Storage) {
    const n = numel(shape);
    if (data.length !== n) {
      throw new RangeError(`Tensor: storage has ${data.length} elements, shape [${shape.join(', ')}] needs ${n}`);
    }
    this.shape = [...shape];
    this.dtype = dtype;
    this.data = data;
  }

  static zeros(shape: readonly number[], dtype: DType = 'f32'): Tensor {
    return new Tensor(shape, dtype, allocStorage(dtype, numel(shape)));
  }

  static fromF32(data: Float32Array, shape: readonly number[] = [data.length]): Tensor {
    return new Tensor(shape, 'f32', data);
  }

  static fromI32(data: Int32Array, shape: readonly number[] = [data.length]): Tensor {
    return new Tensor(shape, 'i32', data);
  }

  get size(): number {
    return this.data.length;
  }

  get rank(): number {
    return this.shape.length;
  }

  /** Size of dimension d (negative counts from the end). */
  dim(d: number): number {
    const i = d < 0 ? this.shape.length + d : d;
    const v = this.shape[i];
    if (v === undefined) throw new RangeError(`dim ${d} out of range for shape [${this.shape.join(', ')}]`);
    return v;
  }

  /** The f32 storage; throws for other dtypes. */
  get f32(): Float32Array {
    if (this.dtype !== 'f32') throw new TypeError(`expected an f32 tensor, got ${this.dtype}`);
    return this.data as Float32Array;
  }

  get i32(): Int32Array {
    if (this.dtype !== 'i32') throw new TypeError(`expected an i32 tensor, got ${this.dtype}`);
    return this.data as Int32Array;
  }

  /** Same storage, new shape (same element count). */
  view(shape: readonly number[]): Tensor {
    return new Tensor(shape, this.dtype, this.data);
  }

  /** Rows [start, start+count) along dimension 0, sharing storage. */
  rows(start: number, count: number): Tensor {
    const inner = this.size / this.dim(0);
    const d = this.data.subarray(start * inner, (start + count) * inner) as Storage;
    return new Tensor([count, ...this.shape.slice(1)], this.dtype, d);
  }

  clone(): Tensor {
    return new Tensor(this.shape, this.dtype, this.data.slice() as Storage);
  }

  toString(): string {
    return `Tensor(${this.dtype}, [${this.shape.join(', ')}])`;
  }
}

/** Throws unless t has exactly the expected shape; `what` names the argument. */
export function expectShape(t: Tensor, shape: readonly number[], what: string): void {
  if (t.shape.length !== shape.length || t.shape.some((d, i) => d !== shape[i])) {
    throw new RangeError(`${what}: expected shape [${shape.join(', ')}], got [${t.shape.join(', ')}]`);
  }
}

export function expectDtype(t: Tensor, dtype: DType, what: string): void {
  if (t.dtype !== dtype) throw new TypeError(`${what}: expected dtype ${dtype}, got ${t.dtype}`);
}

/**
 * One allocation for many tensors: carve f32 tensors out of a single Float32Array so that
 * weights, gradients or activations of a block live in one buffer (zeroed with one fill).
 */
export class Arena {
  readonly buffer: Float32Array;
  private offset = 0;
  constructor(totalElements: number) {
    this.buffer = new Float32Array(totalElements);
  }
  take(shape: readonly number[]): Tensor {
    const n = numel(shape);
    if (this.offset + n > this.buffer.length) throw new RangeError(`Arena: out of space (${this.offset}+${n} > ${this.buffer.length})`);
    const t = new Tensor(shape, 'f32', this.buffer.subarray(this.offset, this.offset + n));
    this.offset += n;
    return t;
  }
  zero(): void {
    this.buffer.fill(0);
  }
}
