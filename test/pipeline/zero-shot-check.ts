// The independent check of zero-shot log-likelihoods shared by the default-tier tests
// (test/pipeline/zero-shot.test.ts) and the full-tier run on ../shared's llama-small: every
// request's tokens found again by lm-eval's split written out here, its sequence run alone
// (unpadded, unbatched) through Model.forward, log-softmax in f64, the continuation's
// log-probabilities summed; then the predictions, acc, acc_norm, stderr and the average from
// those numbers.
import assert from 'node:assert/strict';
import { Model } from '../../src/model/model.js';
import { WeightSource } from '../../src/model/weights.js';
import { loadTokenizer, type Tokenizer } from '../../src/io/tokenizer.js';
import { loadTaskDocs, MC_TASKS, type McDoc } from '../../src/data/mc-tasks.js';
import { argmax, meanStderr, type ZeroShotResult } from '../../src/pipeline/zero-shot.js';

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
