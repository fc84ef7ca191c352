// The independent check of zero-shot log-likelihoods shared by the default-tier tests
// (test/pipeline/zero-shot.test.ts) and the full-tier run on ../shared's llama-small: every
// request's tokens found again by lm-eval's split written out here, its sequence run alone
// (unpadded, unbatched) through Model.forward, log-softmax in f64, the continuation's
// log-probabilities summed; then the predictions, acc, acc_norm, stderr and the average from
// those numbers. refLogProbs is a second, slower witness: the Llama forward written out from the
// reference twins of src/ops/ref (f64 sums), no native kernel and no Model.
import assert from 'node:assert/strict';
import { Model } from '../../src/model/model.js';
import { WeightSource } from '../../src/model/weights.js';
import { loadTokenizer, type Tokenizer } from '../../src/io/tokenizer.js';
import { loadTaskDocs, MC_TASKS, type McDoc } from '../../src/data/mc-tasks.js';
import { argmax, meanStderr, type ZeroShotResult } from '../../src/pipeline/zero-shot.js';
import { Tensor } from '../../src/engine/tensor.js';
import { allocBlockParams } from '../../src/model/block.js';
import { ropeTables } from '../../src/model/rope.js';
import { embeddingForwardRef } from '../../src/ops/ref/embedding.js';
import { rmsnormForwardRef } from '../../src/ops/ref/rmsnorm.js';
import { matmulRef } from '../../src/ops/ref/matmul.js';
import { ropeForwardRef } from '../../src/ops/ref/rope.js';
import { attentionForwardRef } from '../../src/ops/ref/attention.js';
import { swigluForwardRef } from '../../src/ops/ref/swiglu.js';
import { addRef } from '../../src/ops/ref/elementwise.js';

/** lm-eval's HFLM._encode_pair, written out again: the whole sequence and the continuation's length. */
function encodePairAgain(tok: Tokenizer, context: string, continuation: string): { ids: number[]; cont: number } {
  const trailing = /\s*$/.exec(context)![0].length;
  if (trailing > 0) {
    continuation = context.slice(context.length - trailing) + continuation;
    context = context.slice(0, context.length - trailing);
  }
  const whole = tok.encode(context + continuation, { addSpecialTokens: false });
  const ctxLen = tok.encode(context, { addSpecialTokens: false }).length;
  return { ids: whole, cont: whole.length - ctxLen };
}

/** Every doc's log-likelihoods recomputed one unpadded sequence at a time, log-softmax in f64. */
export async function checkEveryItem(modelDir: string, r: ZeroShotResult): Promise<number> {
  const src = WeightSource.open(modelDir);
  const model = Model.load(src);
  const tok = loadTokenizer(modelDir);
  const V = src.cfg.vocabSize;
  let worst = 0;
  try {
    const docsOf = new Map<string, McDoc[]>();
    for (const t of r.tasks) docsOf.set(t.task, (await loadTaskDocs(MC_TASKS[t.task]!, t.files, t.docs)).docs);
    assert.equal(r.details!.length, r.tasks.reduce((n, t) => n + t.docs, 0));
    for (const d of r.details!) {
      const doc = docsOf.get(d.task)![d.doc]!;
      doc.requests.forEach((req, c) => {
        const { ids, cont } = encodePairAgain(tok, req.context, req.continuation);
        assert.equal(d.tokens[c], cont, `${d.task} doc ${d.doc} choice ${c}: continuation tokens`);
        const logits = model.forward(Int32Array.from(ids), 1, ids.length).f32; // (L, V)
        let ll = 0;
        for (let t = ids.length - cont; t < ids.length; t++) {
          const row = logits.subarray((t - 1) * V, t * V);
          let max = -Infinity;
          for (const x of row) max = Math.max(max, x);
          let sum = 0;
          for (const x of row) sum += Math.exp(x - max);
          ll += row[ids[t]!]! - max - Math.log(sum);
        }
        const err = Math.abs(d.lls[c]! - ll);
        worst = Math.max(worst, err);
        assert.ok(err <= 1e-4 + 1e-5 * Math.abs(ll), `${d.task} doc ${d.doc} choice ${c}: log-likelihood ${d.lls[c]} vs ${ll} computed alone`);
      });
      // the predictions and metrics follow from these log-likelihoods
      assert.equal(d.pred, argmax(d.lls));
      assert.equal(d.predNorm, argmax(d.lls.map((x, c) => x / Array.from(doc.choices[c]!).length)));
    }
  } finally {
    model.free();
    src.close();
  }
  for (const t of r.tasks) {
    const mine = r.details!.filter((d) => d.task === t.task);
    const acc = meanStderr(mine.map((d) => (d.pred === d.gold ? 1 : 0)));
    const norm = meanStderr(mine.map((d) => (d.predNorm === d.gold ? 1 : 0)));
    assert.equal(t.acc, acc.mean);
    assert.equal(t.accStderr, acc.stderr);
    assert.equal(t.accNorm, t.task === 'winogrande' ? null : norm.mean);
    assert.equal(t.accNormStderr, t.task === 'winogrande' ? null : norm.stderr);
  }
  assert.equal(r.averageAcc, r.tasks.reduce((s, t) => s + t.acc, 0) / r.tasks.length);
  process.stdout.write(`# ${modelDir}: ${r.details!.reduce((n, d) => n + d.lls.length, 0)} log-likelihoods, largest difference ${worst.toExponential(2)}\n`);
  return worst;
}

/**
 * Log-softmax rows (T, V) in f64 of token ids (T) through a Llama-architecture checkpoint
 * (no biases, no q/k norms), written out from the reference ops: embedding, per block
 * x += o(attn(rope(q(n1)), rope(k(n1)), v(n1))), x += down(silu(gate(n2)) * up(n2)) with
 * n = rmsnorm(x), then rmsnorm and lm_head. Linears of a quantized checkpoint are dequantized.
 */
export function refLogProbs(src: WeightSource, ids: number[]): Float64Array[] {
  const cfg = src.cfg;
  const T = ids.length;
  const C = cfg.hiddenSize;
  const H = cfg.numHeads;
  const Hkv = cfg.numKvHeads;
  const D = cfg.headDim;
  const F = cfg.intermediateSize;
  const V = cfg.vocabSize;
  const emb = src.embedding(); // (V, C)
  const x = Tensor.zeros([T, C]);
  embeddingForwardRef(x, Tensor.fromI32(Int32Array.from(ids)), emb);
  const { cos, sin } = ropeTables(cfg, 0, T); // (T, D/2)
  const { params: p } = allocBlockParams(cfg);
  const lin = (w: Tensor, inp: Tensor, rows: number): Tensor => {
    const out = Tensor.zeros([T, rows]);
    matmulRef(out, inp, w, { transB: true }); // (T, in) @ (rows, in)ᵀ
    return out;
  };
  const norm = (inp: Tensor, w: Tensor): Tensor => {
    const out = Tensor.zeros([T, C]);
    rmsnormForwardRef(out, Tensor.zeros([T]), inp, w, cfg.rmsNormEps);
    return out;
  };
  for (let l = 0; l < cfg.numLayers; l++) {
    src.loadBlock(l, p);
    for (const extra of ['qBias', 'kBias', 'vBias', 'oBias', 'qNorm', 'kNorm'] as const) {
      if (p[extra]) throw new Error(`refLogProbs: ${extra} is not written out here (a Llama block has none)`);
    }
    const n1 = norm(x, p.inputNorm);
    const heads = (t: Tensor, h: number): Tensor => Tensor.fromF32(t.f32, [1, T, h, D]);
    const q = Tensor.zeros([1, T, H, D]), k = Tensor.zeros([1, T, Hkv, D]);
    ropeForwardRef(q, heads(lin(p.q, n1, H * D), H), cos, sin);
    ropeForwardRef(k, heads(lin(p.k, n1, Hkv * D), Hkv), cos, sin);
    const att = Tensor.zeros([1, T, H, D]);
    attentionForwardRef(att, Tensor.zeros([1, H, T]), q, k, heads(lin(p.v, n1, Hkv * D), Hkv), { window: cfg.slidingWindow });
    addRef(x, x, lin(p.o, Tensor.fromF32(att.f32, [T, H * D]), C));
    const n2 = norm(x, p.postNorm);
    const act = Tensor.zeros([T, F]);
    swigluForwardRef(act, lin(p.gate, n2, F), lin(p.up, n2, F));
    addRef(x, x, lin(p.down, act, C));
  }
  const logits = lin(src.lmHead(emb), norm(x, src.finalNorm()), V); // (T, V)
  const rows: Float64Array[] = [];
  for (let t = 0; t < T; t++) {
    const row = logits.f32.subarray(t * V, (t + 1) * V);
    let max = -Infinity;
    for (const v of row) max = Math.max(max, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - max);
    rows.push(Float64Array.from(row, (v) => v - max - Math.log(sum)));
  }
  return rows;
}

/**
 * The summed continuation log-likelihood of (context, continuation) by refLogProbs, its tokens
 * split as lm-eval splits them.
 */
export function refLoglikelihood(src: WeightSource, tok: Tokenizer, context: string, continuation: string): number {
  const { ids, cont } = encodePairAgain(tok, context, continuation);
  const lp = refLogProbs(src, ids);
  let ll = 0;
  for (let t = ids.length - cont; t < ids.length; t++) ll += lp[t - 1]![ids[t]!]!;
  return ll;
}
