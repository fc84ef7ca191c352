// Python's `random` module, bit for bit, for the draws the reference data loaders make: the
// Mersenne Twister MT19937 seeded as `random.seed(n)` seeds it for a non-negative int n
// (init_by_array over n's 32-bit words), `getrandbits(k)` and `randint(a, b)` (randrange through
// _randbelow_with_getrandbits: draw k = bit_length(n) bits, retry while >= n). The C4 perplexity
// sample of the official EfficientQAT / GPTQ code (`random.seed(0)`, 256 × randint draws) is
// reproduced with it (src/data/named-datasets.ts).

const N = 624;
const M = 397;

export class PyRandom {
  private readonly mt = new Uint32Array(N);
  private mti = N + 1;

  /** As `random.seed(seed)` for an integer seed (its absolute value, split into 32-bit words). */
  constructor(seed: number | bigint) {
    let n = BigInt(seed);
    if (n < 0n) n = -n;
    const key: number[] = [];
    while (n > 0n) {
      key.push(Number(n & 0xffffffffn));
      n >>= 32n;
    }
    if (key.length === 0) key.push(0);
    this.initByArray(key);
  }

  private initGenrand(s: number): void {
    const mt = this.mt;
    mt[0] = s >>> 0;
    for (let i = 1; i < N; i++) {
      const prev = mt[i - 1]! ^ (mt[i - 1]! >>> 30);
      mt[i] = (Math.imul(1812433253, prev) + i) >>> 0;
    }
    this.mti = N;
  }

  private initByArray(key: number[]): void {
    const mt = this.mt;
    this.initGenrand(19650218);
    let i = 1;
    let j = 0;
    for (let k = Math.max(N, key.length); k > 0; k--) {
      const prev = mt[i - 1]! ^ (mt[i - 1]! >>> 30);
      mt[i] = ((mt[i]! ^ Math.imul(prev, 1664525)) + key[j]! + j) >>> 0;
      i++;
      j++;
      if (i >= N) {
        mt[0] = mt[N - 1]!;
        i = 1;
      }
      if (j >= key.length) j = 0;
    }
    for (let k = N - 1; k > 0; k--) {
      const prev = mt[i - 1]! ^ (mt[i - 1]! >>> 30);
      mt[i] = ((mt[i]! ^ Math.imul(prev, 1566083941)) - i) >>> 0;
      i++;
      if (i >= N) {
        mt[0] = mt[N - 1]!;
        i = 1;
      }
    }
    mt[0] = 0x80000000;
  }

  /** The next 32-bit output (genrand_uint32). */
  uint32(): number {
    const mt = this.mt;
    if (this.mti >= N) {
      let kk = 0;
      const mag = (y: number) => (y & 1 ? 0x9908b0df : 0);
      for (; kk < N - M; kk++) {
        const y = (mt[kk]! & 0x80000000) | (mt[kk + 1]! & 0x7fffffff);
        mt[kk] = (mt[kk + M]! ^ (y >>> 1) ^ mag(y)) >>> 0;
      }
      for (; kk < N - 1; kk++) {
        const y = (mt[kk]! & 0x80000000) | (mt[kk + 1]! & 0x7fffffff);
        mt[kk] = (mt[kk + (M - N)]! ^ (y >>> 1) ^ mag(y)) >>> 0;
      }
      const y = (mt[N - 1]! & 0x80000000) | (mt[0]! & 0x7fffffff);
      mt[N - 1] = (mt[M - 1]! ^ (y >>> 1) ^ mag(y)) >>> 0;
      this.mti = 0;
    }
    let y = mt[this.mti++]!;
    y ^= y >>> 11;
    y = (y ^ ((y << 7) & 0x9d2c5680)) >>> 0;
    y = (y ^ ((y << 15) & 0xefc60000)) >>> 0;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** `random.random()`: a double in [0, 1) from 53 bits. */
  random(): number {
    const a = this.uint32() >>> 5;
    const b = this.uint32() >>> 6;
    return (a * 67108864 + b) / 9007199254740992;
  }

  /** `random.getrandbits(k)` for 0 <= k <= 53 (as a number). */
  getrandbits(k: number): number {
    if (!Number.isInteger(k) || k < 0 || k > 53) throw new RangeError(`getrandbits: k must be an integer in [0, 53], got ${k}`);
    if (k === 0) return 0;
    if (k <= 32) return this.uint32() >>> (32 - k);
    // words from the least significant up; the last one keeps its top bits
    const lo = this.uint32();
    const hi = this.uint32() >>> (64 - k);
    return hi * 4294967296 + lo;
  }

  /** `random.randrange(n)` for n >= 1: uniform in [0, n). */
  below(n: number): number {
    if (!Number.isSafeInteger(n) || n < 1) throw new RangeError(`randrange: empty range for randrange(${n})`);
    let k = 0; // n.bit_length()
    for (let x = n; x > 0; x = Math.floor(x / 2)) k++;
    let r = this.getrandbits(k);
    while (r >= n) r = this.getrandbits(k);
    return r;
  }

  /** `random.randint(a, b)`: uniform in [a, b], both ends included. */
  randint(a: number, b: number): number {
    if (b < a) throw new RangeError(`randint: empty range for randint(${a}, ${b})`);
    return a + this.below(b - a + 1);
  }
}
