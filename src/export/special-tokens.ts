// Which special tokens a checkpoint's tokenizer adds around the text, read off the tokenizer
// itself (eqat's, src/io/tokenizer.ts: encoding with and without special tokens), so that every
// export tells its runtime to add exactly those: llama.cpp through tokenizer.ggml.add_bos_token /
// add_eos_token (src/export/gguf-tokenizer.ts), transformers.js through tokenizer_config.json's
// add_bos_token / add_eos_token (src/export/onnx.ts; its text-generation pipeline adds special
// tokens only when one of them is true).
import { join } from 'node:path';
import { CheckpointError } from '../io/errors.js';
import { loadTokenizer } from '../io/tokenizer.js';

export interface SpecialTokens {
  bos: number | null;
  eos: number | null;
  /** Ids the tokenizer puts before and after the text when adding special tokens. */
  prefix: number[];
  suffix: number[];
  /** The prefix is exactly bos / the suffix exactly eos. */
  addBos: boolean;
  addEos: boolean;
}

/** The special tokens `modelDir`'s tokenizer adds around a text. */
export function specialTokens(modelDir: string): SpecialTokens {
  const hf = loadTokenizer(modelDir);
  const plain = hf.encode('a', { addSpecialTokens: false });
  const withSpecial = hf.encode('a', { addSpecialTokens: true });
  const at = indexOfRun(withSpecial, plain);
  if (at < 0) throw new CheckpointError(join(modelDir, 'tokenizer.json'), 'cannot locate the text tokens inside the special-token template');
  const prefix = withSpecial.slice(0, at);
  const suffix = withSpecial.slice(at + plain.length);
  const bos = hf.bosId;
  const eos = hf.eosIds[0] ?? null;
  return { bos, eos, prefix, suffix, addBos: prefix.length === 1 && prefix[0] === bos, addEos: suffix.length === 1 && suffix[0] === eos };
}

/** First index where `run` occurs inside `list` (run may be empty → 0), or −1. */
function indexOfRun(list: number[], run: number[]): number {
  for (let i = 0; i + run.length <= list.length; i++) {
    let ok = true;
    for (let j = 0; j < run.length && ok; j++) ok = list[i + j] === run[j];
    if (ok) return i;
  }
  return -1;
}
