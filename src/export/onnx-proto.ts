// The ONNX file format at the protobuf wire level: just enough of onnx.proto (ModelProto,
// GraphProto, NodeProto, AttributeProto, TensorProto, ValueInfoProto and the type messages) to
// write an inference model, plus a small generic reader used to inspect what was written.
//
// Why not a protobuf library: the ONNX subset needed to write a model is a dozen fields, and a
// hand-rolled encoder can stream. A message is kept as a list of byte chunks with its total
// length known, so tensor payloads are referenced, never copied into one big buffer, and the
// file is written chunk by chunk (a model of a few GiB never exists as one allocation).
//
// Wire format (protobuf encoding spec): each field is a key varint (field_number << 3 | wire
// type) followed by a varint (type 0), 8 bytes (type 1), a length-delimited payload (type 2) or
// 4 bytes (type 5). Negative int64 values are varints of their 64-bit two's complement (10 bytes).
// Field numbers below are those of onnx.proto (onnx/onnx, IR version 8).
import { closeSync, openSync, writeSync } from 'node:fs';

/** TensorProto.DataType values used by the exporter. */
export const ONNX_DTYPE = {
  FLOAT: 1,
  UINT8: 2,
  INT8: 3,
  INT32: 6,
  INT64: 7,
  BOOL: 9,
  FLOAT16: 10,
  BFLOAT16: 16,
} as const;
export type OnnxDtype = (typeof ONNX_DTYPE)[keyof typeof ONNX_DTYPE];

const DTYPE_BYTES: Record<number, number> = { 1: 4, 2: 1, 3: 1, 6: 4, 7: 8, 9: 1, 10: 2, 16: 2 };

/** Bytes per element of an ONNX data type this module knows. */
export function onnxDtypeBytes(dtype: number): number {
  const b = DTYPE_BYTES[dtype];
  if (b === undefined) throw new RangeError(`onnxDtypeBytes: unknown data type ${dtype}`);
  return b;
}

// ---------------------------------------------------------------------------------------------
// Encoding

/** An encoded message: its bytes as a list of chunks, and their total length. */
export interface Encoded {
  chunks: Uint8Array[];
  length: number;
}

const WIRE_VARINT = 0;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;

function varintBytes(value: number | bigint): Uint8Array {
  let v = typeof value === 'bigint' ? value : BigInt(value);
  if (v < 0n) v = BigInt.asUintN(64, v);
  if (v <= 0x7fn) return Uint8Array.of(Number(v));
  const out: number[] = [];
  while (v > 0x7fn) {
    out.push(Number(v & 0x7fn) | 0x80);
    v >>= 7n;
  }
  out.push(Number(v));
  return Uint8Array.from(out);
}

function checkInt(op: string, v: number): void {
  if (!Number.isSafeInteger(v)) throw new RangeError(`${op}: ${v} is not a safe integer`);
}

/** Builds one message field by field. */
export class MessageWriter {
  private readonly chunks: Uint8Array[] = [];
  private length = 0;

  private push(b: Uint8Array): void {
    if (b.length === 0) return;
    this.chunks.push(b);
    this.length += b.length;
  }

  private key(field: number, wire: number): void {
    this.push(varintBytes(field * 8 + wire));
  }

  /** int32 / int64 / enum / bool field. */
  varint(field: number, value: number | bigint): this {
    if (typeof value === 'number') checkInt('MessageWriter.varint', value);
    this.key(field, WIRE_VARINT);
    this.push(varintBytes(value));
    return this;
  }

  float(field: number, value: number): this {
    this.key(field, WIRE_FIXED32);
    const b = new Uint8Array(4);
    new DataView(b.buffer).setFloat32(0, value, true);
    this.push(b);
    return this;
  }

  /** bytes field; the payload is referenced, not copied. */
  bytes(field: number, payload: Uint8Array): this {
    this.key(field, WIRE_LEN);
    this.push(varintBytes(payload.length));
    this.push(payload);
    return this;
  }

  string(field: number, s: string): this {
    return this.bytes(field, new TextEncoder().encode(s));
  }

  message(field: number, m: Encoded): this {
    this.key(field, WIRE_LEN);
    this.push(varintBytes(m.length));
    for (const c of m.chunks) this.push(c);
    return this;
  }

  finish(): Encoded {
    return { chunks: this.chunks, length: this.length };
  }
}

// ONNX messages -------------------------------------------------------------------------------

/** Where a tensor's payload lives when it is not inside the model file. */
export interface ExternalLocation {
  location: string; // relative to the model file's directory
  offset: number;
  length: number;
}

/** A constant tensor (graph initializer or Constant value). */
export interface TensorDef {
  name: string;
  dtype: OnnxDtype;
  dims: number[];
  /** Little-endian element bytes (raw_data), or where they were written. */
  data: Uint8Array | ExternalLocation;
}

export type AttrValue =
  | { i: number }
  | { f: number }
  | { s: string }
  | { ints: number[] }
  | { floats: number[] }
  | { t: TensorDef };

export interface NodeDef {
  opType: string;
  domain?: string;
  name: string;
  inputs: string[];
  outputs: string[];
  attrs?: Record<string, AttrValue>;
}

/** A graph input or output: element type and shape, each dimension a size or a symbol. */
export interface ValueInfoDef {
  name: string;
  dtype: OnnxDtype;
  shape: (number | string)[];
}

export interface GraphDef {
  name: string;
  nodes: NodeDef[];
  initializers: TensorDef[];
  inputs: ValueInfoDef[];
  outputs: ValueInfoDef[];
}

export interface ModelDef {
  irVersion: number;
  opsets: { domain: string; version: number }[];
  producerName: string;
  producerVersion: string;
  docString?: string;
  graph: GraphDef;
  metadata?: Record<string, string>;
}

// AttributeProto.AttributeType
const ATTR_FLOAT = 1;
const ATTR_INT = 2;
const ATTR_STRING = 3;
const ATTR_TENSOR = 4;
const ATTR_FLOATS = 6;
const ATTR_INTS = 7;

function stringPair(key: string, value: string): Encoded {
  return new MessageWriter().string(1, key).string(2, value).finish();
}

export function encodeTensor(t: TensorDef): Encoded {
  const w = new MessageWriter();
  for (const d of t.dims) w.varint(1, d); // dims
  w.varint(2, t.dtype); // data_type
  w.string(8, t.name); // name
  if (t.data instanceof Uint8Array) {
    const want = t.dims.reduce((a, b) => a * b, 1) * onnxDtypeBytes(t.dtype);
    if (t.data.length !== want) {
      throw new RangeError(`encodeTensor: ${t.name} has ${t.data.length} bytes, dims [${t.dims.join(', ')}] need ${want}`);
    }
    w.bytes(9, t.data); // raw_data
  } else {
    const e = t.data;
    w.message(13, stringPair('location', e.location)); // external_data
    w.message(13, stringPair('offset', String(e.offset)));
    w.message(13, stringPair('length', String(e.length)));
    w.varint(14, 1); // data_location = EXTERNAL
  }
  return w.finish();
}

function encodeAttribute(name: string, a: AttrValue): Encoded {
  const w = new MessageWriter().string(1, name);
  if ('i' in a) w.varint(20, ATTR_INT).varint(3, a.i);
  else if ('f' in a) w.varint(20, ATTR_FLOAT).float(2, a.f);
  else if ('s' in a) w.varint(20, ATTR_STRING).string(4, a.s);
  else if ('ints' in a) {
    w.varint(20, ATTR_INTS);
    for (const v of a.ints) w.varint(8, v);
  } else if ('floats' in a) {
    w.varint(20, ATTR_FLOATS);
    for (const v of a.floats) w.float(7, v);
  } else w.varint(20, ATTR_TENSOR).message(5, encodeTensor(a.t));
  return w.finish();
}

function encodeNode(n: NodeDef): Encoded {
  const w = new MessageWriter();
  for (const i of n.inputs) w.string(1, i);
  for (const o of n.outputs) w.string(2, o);
  w.string(3, n.name);
  w.string(4, n.opType);
  for (const [k, v] of Object.entries(n.attrs ?? {})) w.message(5, encodeAttribute(k, v));
  if (n.domain) w.string(7, n.domain);
  return w.finish();
}

function encodeValueInfo(v: ValueInfoDef): Encoded {
  const shape = new MessageWriter();
  for (const d of v.shape) {
    const dim = new MessageWriter();
    if (typeof d === 'number') dim.varint(1, d); // dim_value
    else dim.string(2, d); // dim_param
    shape.message(1, dim.finish());
  }
  const tensorType = new MessageWriter().varint(1, v.dtype).message(2, shape.finish()).finish();
  const type = new MessageWriter().message(1, tensorType).finish(); // TypeProto.tensor_type
  return new MessageWriter().string(1, v.name).message(2, type).finish();
}

function encodeGraph(g: GraphDef): Encoded {
  const w = new MessageWriter();
  for (const n of g.nodes) w.message(1, encodeNode(n));
  w.string(2, g.name);
  for (const t of g.initializers) w.message(5, encodeTensor(t));
  for (const v of g.inputs) w.message(11, encodeValueInfo(v));
  for (const v of g.outputs) w.message(12, encodeValueInfo(v));
  return w.finish();
}

export function encodeModel(m: ModelDef): Encoded {
  const w = new MessageWriter();
  w.varint(1, m.irVersion);
  w.string(2, m.producerName);
  w.string(3, m.producerVersion);
  if (m.docString) w.string(6, m.docString);
  w.message(7, encodeGraph(m.graph));
  for (const o of m.opsets) w.message(8, new MessageWriter().string(1, o.domain).varint(2, o.version).finish());
  for (const [k, v] of Object.entries(m.metadata ?? {})) w.message(14, stringPair(k, v));
  return w.finish();
}

/** Protobuf parsers (onnxruntime's included) refuse messages of 2 GiB or more. */
export const MAX_PROTO_BYTES = 2 ** 31 - 1;

/** Writes an encoded message to a file chunk by chunk; returns the byte count. */
export function writeEncoded(path: string, m: Encoded): number {
  if (m.length > MAX_PROTO_BYTES) {
    throw new RangeError(`writeEncoded: ${path}: the model is ${m.length} bytes, over protobuf's 2 GiB limit (use external data)`);
  }
  const fd = openSync(path, 'w');
  try {
    let pending: Uint8Array[] = [];
    let pendingBytes = 0;
    const flush = () => {
      if (pendingBytes === 0) return;
      const buf = new Uint8Array(pendingBytes);
      let o = 0;
      for (const c of pending) {
        buf.set(c, o);
        o += c.length;
      }
      writeAll(fd, buf);
      pending = [];
      pendingBytes = 0;
    };
    for (const c of m.chunks) {
      if (c.length >= 1 << 16) {
        flush();
        writeAll(fd, c);
      } else {
        pending.push(c);
        pendingBytes += c.length;
        if (pendingBytes >= 1 << 20) flush();
      }
    }
    flush();
  } finally {
    closeSync(fd);
  }
  return m.length;
}

function writeAll(fd: number, b: Uint8Array): void {
  let o = 0;
  while (o < b.length) o += writeSync(fd, b, o, b.length - o);
}

/** Concatenates an encoded message into one buffer (tests, small models). */
export function toBytes(m: Encoded): Uint8Array {
  const out = new Uint8Array(m.length);
  let o = 0;
  for (const c of m.chunks) {
    out.set(c, o);
    o += c.length;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// Reading (inspection of written files)

/** One decoded field: a varint (as bigint), fixed-width bytes, or a length-delimited payload. */
export type RawField = { field: number; wire: 0; value: bigint } | { field: number; wire: 1 | 2 | 5; bytes: Uint8Array };

/** Splits one message into its fields (no schema: nested messages stay as bytes). */
export function readFields(buf: Uint8Array): RawField[] {
  const out: RawField[] = [];
  let p = 0;
  const readVarint = (): bigint => {
    let shift = 0n;
    let v = 0n;
    for (;;) {
      if (p >= buf.length) throw new RangeError('readFields: truncated varint');
      const b = buf[p++]!;
      v |= BigInt(b & 0x7f) << shift;
      if ((b & 0x80) === 0) return v;
      shift += 7n;
      if (shift > 63n) throw new RangeError('readFields: varint longer than 10 bytes');
    }
  };
  while (p < buf.length) {
    const key = Number(readVarint());
    const field = key >>> 3;
    const wire = key & 7;
    if (wire === 0) out.push({ field, wire, value: readVarint() });
    else if (wire === 1 || wire === 5) {
      const n = wire === 1 ? 8 : 4;
      if (p + n > buf.length) throw new RangeError('readFields: truncated fixed-width field');
      out.push({ field, wire, bytes: buf.subarray(p, p + n) });
      p += n;
    } else if (wire === 2) {
      const n = Number(readVarint());
      if (p + n > buf.length) throw new RangeError(`readFields: field ${field} runs past the end`);
      out.push({ field, wire, bytes: buf.subarray(p, p + n) });
      p += n;
    } else throw new RangeError(`readFields: unsupported wire type ${wire} (field ${field})`);
  }
  return out;
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);
const bytesOf = (f: RawField) => (f.wire === 0 ? new Uint8Array(0) : f.bytes);
const intOf = (f: RawField) => (f.wire === 0 ? Number(BigInt.asIntN(64, f.value)) : NaN);

/** What tests need to know about a written model. */
export interface ModelSummary {
  irVersion: number;
  opsets: { domain: string; version: number }[];
  nodes: { opType: string; domain: string; name: string; inputs: string[]; outputs: string[]; ints: Record<string, number> }[];
  initializers: { name: string; dtype: number; dims: number[]; rawBytes: number; external: Record<string, string> | null }[];
  inputs: ValueInfoDef[];
  outputs: ValueInfoDef[];
}

function readValueInfo(b: Uint8Array): ValueInfoDef {
  let name = '';
  let dtype = 0;
  const shape: (number | string)[] = [];
  for (const f of readFields(b)) {
    if (f.field === 1) name = text(bytesOf(f));
    if (f.field === 2) {
      for (const tf of readFields(bytesOf(f))) {
        if (tf.field !== 1) continue;
        for (const tt of readFields(bytesOf(tf))) {
          if (tt.field === 1) dtype = intOf(tt);
          if (tt.field === 2) {
            for (const dim of readFields(bytesOf(tt))) {
              const d = readFields(bytesOf(dim))[0];
              if (!d) shape.push('?');
              else shape.push(d.field === 1 ? intOf(d) : text(bytesOf(d)));
            }
          }
        }
      }
    }
  }
  return { name, dtype: dtype as OnnxDtype, shape };
}

/** Decodes the structure of an ONNX model file (graph, initializer headers, opsets). */
export function readModelSummary(buf: Uint8Array): ModelSummary {
  const s: ModelSummary = { irVersion: 0, opsets: [], nodes: [], initializers: [], inputs: [], outputs: [] };
  for (const f of readFields(buf)) {
    if (f.field === 1) s.irVersion = intOf(f);
    if (f.field === 8) {
      let domain = '';
      let version = 0;
      for (const o of readFields(bytesOf(f))) {
        if (o.field === 1) domain = text(bytesOf(o));
        if (o.field === 2) version = intOf(o);
      }
      s.opsets.push({ domain, version });
    }
    if (f.field !== 7) continue;
    for (const g of readFields(bytesOf(f))) {
      if (g.field === 1) {
        const node = { opType: '', domain: '', name: '', inputs: [] as string[], outputs: [] as string[], ints: {} as Record<string, number> };
        for (const nf of readFields(bytesOf(g))) {
          if (nf.field === 1) node.inputs.push(text(bytesOf(nf)));
          if (nf.field === 2) node.outputs.push(text(bytesOf(nf)));
          if (nf.field === 3) node.name = text(bytesOf(nf));
          if (nf.field === 4) node.opType = text(bytesOf(nf));
          if (nf.field === 7) node.domain = text(bytesOf(nf));
          if (nf.field === 5) {
            let an = '';
            let iv: number | null = null;
            for (const af of readFields(bytesOf(nf))) {
              if (af.field === 1) an = text(bytesOf(af));
              if (af.field === 3) iv = intOf(af);
            }
            if (iv !== null) node.ints[an] = iv;
          }
        }
        s.nodes.push(node);
      } else if (g.field === 5) {
        const t = { name: '', dtype: 0, dims: [] as number[], rawBytes: 0, external: null as Record<string, string> | null };
        for (const tf of readFields(bytesOf(g))) {
          if (tf.field === 1) t.dims.push(intOf(tf));
          if (tf.field === 2) t.dtype = intOf(tf);
          if (tf.field === 8) t.name = text(bytesOf(tf));
          if (tf.field === 9) t.rawBytes = bytesOf(tf).length;
          if (tf.field === 13) {
            let k = '';
            let v = '';
            for (const e of readFields(bytesOf(tf))) {
              if (e.field === 1) k = text(bytesOf(e));
              if (e.field === 2) v = text(bytesOf(e));
            }
            (t.external ??= {})[k] = v;
          }
        }
        s.initializers.push(t);
      } else if (g.field === 11) s.inputs.push(readValueInfo(bytesOf(g)));
      else if (g.field === 12) s.outputs.push(readValueInfo(bytesOf(g)));
    }
  }
  return s;
}
