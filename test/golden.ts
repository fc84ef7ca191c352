// Checks of a model directory against its PyTorch golden.json (see ../shared/README.md):
// tokenizer ids, logits at three positions, mean next-token cross-entropy, greedy tokens. Also
// the model fixtures tests share: the bundled tiny model and its RTN checkpoints.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Tensor } from '../src/engine/tensor.js';
import { packageRoot } from '../src/engine/native.js';
import { WeightSource } from '../src/model/weights.js';
import { Model } from '../src/model/model.js';
import { loadTokenizer } from '../src/io/tokenizer.js';
import { crossEntropyForward } from '../src/ops/crossentropy.js';
import { generateIds } from '../src/pipeline/generate.js';
import { blockApDefaults, runBlockAp } from '../src/pipeline/block-ap.js';

export interface Golden {
  tokenize: { text: string; ids_no_special: number[]; ids_with_special: number[] }[];
  forward: { input_ids: number[]; positions: number[]; logits: Record<string, number[]>; mean_ce_next_token: number };
  ppl_fp32_seq512: Record<string, number>;
  greedy: { prompt_ids: number[]; output_ids: number[] };
  rtn_ppl_fp32_seq512_test_mix: Record<string, number>;
}

export const REPO = packageRoot();
export const SHARED = join(REPO, '..', 'shared');
export const TINY = join(REPO, 'fixtures', 'llama-tiny');

/**
 * Writes the round-to-nearest checkpoint of `model` to `out` and returns `out`: Block-AP with
 * zero epochs, i.e. min-max step sizes and zero points, no calibration data, packed as every
 * quantized checkpoint is. The cheapest quantized model a test can have.
 */
export async function writeRtn(model: string, out: string, bits: number, groupSize: number): Promise<string> {
  await runBlockAp({ ...blockApDefaults(bits), model, calib: null, out, wbits: bits, groupSize, epochs: 0, quiet: true });
  return out;
}

const rtnTinyMade = new Map<string, Promise<string>>();
let rtnTinyDir: string | null = null;

/**
 * The RTN checkpoint of the bundled llama-tiny at `bits` and `groupSize`, written once per
 * process into a temporary directory that is removed when the process exits.
 */
export function rtnTiny(bits: number, groupSize: number): Promise<string> {
  const name = `w${bits}g${groupSize}`;
  let made = rtnTinyMade.get(name);
  if (!made) {
    if (rtnTinyDir === null) {
      const dir = mkdtempSync(join(tmpdir(), 'eqat-rtn-tiny-'));
      process.on('exit', () => rmSync(dir, { recursive: true, force: true }));
      rtnTinyDir = dir;
    }
    made = writeRtn(TINY, join(rtnTinyDir, name), bits, groupSize);
    rtnTinyMade.set(name, made);
  }
  return made;
}

export function sharedModel(name: string): string | null {
  const dir = join(SHARED, 'models', name);
  return existsSync(join(dir, 'golden.json')) ? dir : null;
}

export function readGolden(dir: string): Golden {
  return JSON.parse(readFileSync(join(dir, 'golden.json'), 'utf8')) as Golden;
}

export function checkTokenizer(dir: string, g: Golden): void {
  const tok = loadTokenizer(dir);
  for (const t of g.tokenize) {
    assert.deepEqual(tok.encode(t.text, { addSpecialTokens: false }), t.ids_no_special, `no special: ${JSON.stringify(t.text)}`);
    assert.deepEqual(tok.encode(t.text, { addSpecialTokens: true }), t.ids_with_special, `with special: ${JSON.stringify(t.text)}`);
  }
}

/** Logits within 1e-3 absolute at the golden positions and mean CE within 1e-4. */
export function checkForward(model: Model<Tensor>, g: Golden): { maxLogitErr: number; ceErr: number } {
  const ids = Int32Array.from(g.forward.input_ids);
  const T = ids.length;
  const V = model.cfg.vocabSize;
  const logits = model.forward(ids, 1, T);
  let maxLogitErr = 0;
  for (const pos of g.forward.positions) {
    const want = g.forward.logits[String(pos)]!;
    const got = logits.f32.subarray(pos * V, (pos + 1) * V);
    assert.equal(want.length, V);
    for (let v = 0; v < V; v++) maxLogitErr = Math.max(maxLogitErr, Math.abs(got[v]! - want[v]!));
  }
  assert.ok(maxLogitErr <= 1e-3, `max |logit error| ${maxLogitErr} > 1e-3`);
  const targets = new Int32Array(T);
  for (let t = 0; t < T - 1; t++) targets[t] = ids[t + 1]!;
  targets[T - 1] = -100;
  const losses = Tensor.zeros([T]);
  crossEntropyForward(losses, logits, Tensor.fromI32(targets));
  let sum = 0;
  for (let t = 0; t < T - 1; t++) sum += losses.f32[t]!;
  const ce = sum / (T - 1);
  const ceErr = Math.abs(ce - g.forward.mean_ce_next_token);
  assert.ok(ceErr <= 1e-4, `mean CE ${ce} vs golden ${g.forward.mean_ce_next_token}`);
  return { maxLogitErr, ceErr };
}

export function checkGreedy(model: Model<Tensor>, g: Golden): void {
  const n = g.greedy.output_ids.length - g.greedy.prompt_ids.length;
  const ids = generateIds(model, g.greedy.prompt_ids, { maxNewTokens: n });
  assert.deepEqual(ids, g.greedy.output_ids);
}

export function loadModel(dir: string): Model<Tensor> {
  const src = WeightSource.open(dir);
  try {
    return Model.load(src);
  } finally {
    src.close();
  }
}
