// Writes the token windows eqat trains and evaluates on, as raw little-endian int32 files, for
// the PyTorch cross-check scripts next to this file (block_ap.py, e2e_qp.py). The windows come
// from the same functions the pipelines call (cachedTokenStream + sampleWindows, evalWindows),
// so both implementations see identical token ids.
//
// usage: node dist/bench/torch-ref/dump-windows.js --model DIR --calib FILE --eval FILE --out DIR
//          [--seqlen 512] [--train-size 1024] [--val-size 64] [--seed 2]
// writes OUT/block-ap-train.i32 (train-size, seqlen) and OUT/block-ap-val.i32 (val-size, seqlen):
//          the Block-AP draw (`eqat block-ap --seed S --train-size N --val-size V`);
//        OUT/e2e-qp-train.i32 (train-size, seqlen): the E2E-QP draw (`eqat e2e-qp --seed S`, no
//          validation windows);
//        OUT/eval.i32 (count, seqlen): `eqat eval --seqlen` windows of the eval file;
//        OUT/windows.json: the settings and shapes.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { cachedTokenStream } from '../../src/data/token-cache.js';
import { evalWindows, sampleWindows } from '../../src/data/windows.js';

const { values } = parseArgs({
  options: {
    model: { type: 'string' },
    calib: { type: 'string' },
    eval: { type: 'string' },
    out: { type: 'string' },
    seqlen: { type: 'string', default: '512' },
    'train-size': { type: 'string', default: '1024' },
    'val-size': { type: 'string', default: '64' },
    seed: { type: 'string', default: '2' },
  },
});
for (const flag of ['model', 'calib', 'eval', 'out'] as const) {
  if (values[flag] === undefined) throw new Error(`dump-windows: --${flag} is required`);
}
const int = (flag: 'seqlen' | 'train-size' | 'val-size' | 'seed'): number => {
  const v = Number(values[flag]);
  if (!Number.isSafeInteger(v) || v < 0) throw new Error(`dump-windows: --${flag} must be a non-negative integer, got ${values[flag]}`);
  return v;
};
const seqlen = int('seqlen'), trainSize = int('train-size'), valSize = int('val-size'), seed = int('seed');
const out = values.out!;
const write = (name: string, a: Int32Array): void => writeFileSync(join(out, name), new Uint8Array(a.buffer, a.byteOffset, a.byteLength));

// every draw first, so that bad input fails before anything is written
const tok = loadTokenizer(values.model!);
const { tokens: stream } = await cachedTokenStream(values.calib!, values.model!, tok);
const bap = sampleWindows(stream, tok, { seqlen, trainSize, valSize, seed }, `--calib ${values.calib}`);
const e2e = sampleWindows(stream, tok, { seqlen, trainSize, valSize: 0, seed }, `--calib ${values.calib}`);
const ev = evalWindows(readFileSync(values.eval!, 'utf8'), tok, seqlen, `--eval ${values.eval}`);
mkdirSync(out, { recursive: true });
write('block-ap-train.i32', bap.train); // (trainSize, seqlen)
write('block-ap-val.i32', bap.val); // (valSize, seqlen)
write('e2e-qp-train.i32', e2e.train); // (trainSize, seqlen)
write('eval.i32', ev.windows); // (count, seqlen)
writeFileSync(join(out, 'windows.json'), JSON.stringify({ model: values.model, calib: values.calib, eval: values.eval, seqlen, trainSize, valSize, seed, evalWindows: ev.count }, null, 2) + '\n');
console.log(`wrote ${out}: Block-AP ${trainSize} + ${valSize}, E2E-QP ${trainSize}, eval ${ev.count} windows of ${seqlen}`);
