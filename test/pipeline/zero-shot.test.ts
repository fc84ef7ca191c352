// Zero-shot multiple choice (`eqat eval --tasks`): each task's requests as lm-eval builds them
// (hand-written strings for the templates, HellaSwag's cleanup and WinoGrande's partial
// scoring), every doc's log-likelihoods against an independent computation (the unpadded,
// unbatched sequence through Model.forward, log-softmax in f64 here, continuation tokens found
// by lm-eval's split written out again here), the first doc of each task also against a Llama
// forward written from the reference ops (test/pipeline/zero-shot-check.ts), acc / acc_norm /
// stderr against hand-computed values on items where the two disagree, the full-precision and
// the packed (RTN) model, the CLI's table and JSON, task data from a hub on 127.0.0.1, quantize's
// eval section (with the full-precision baseline equal to `eqat eval` on the original model, the
// report's before/after rows, --no-eval-baseline, a baseline that fails), and bad input: unknown task names, missing columns, wrong types, empty splits,
// --limit 0, absent task data. The fixtures (test/fixtures/tasks, in each dataset's hub
// schema) were written for these tests by test/fixtures/make-task-data.mjs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawnSync } from 'node:child_process';
import { hellaswagPreprocess, HUB_PARQUET_REVISION, loadTaskDocs, MC_TASKS, parseTaskList, pyCapitalize, taskFiles, type McDoc } from '../../src/data/mc-tasks.js';
import { argmax, docScores, evaluateZeroShot, loadTasks, meanStderr, scoreRequests, type ZeroShotResult } from '../../src/pipeline/zero-shot.js';
import { resolveRecipe, runQuantize } from '../../src/pipeline/quantize.js';
import type { EvalResult } from '../../src/pipeline/eval.js';
import { fmt } from '../../src/report/report.js';
import { FakeHub, fakeSha } from '../io/fake-hub.js';
import { REPO, TINY, rtnTiny } from '../golden.js';
import { checkEveryItem, refLoglikelihood } from './zero-shot-check.js';
import { WeightSource } from '../../src/model/weights.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';

const DATA = join(REPO, 'test', 'fixtures', 'tasks');
const CLI = join(REPO, 'dist', 'src', 'cli', 'main.js');
const ALL = 'piqa,arc_easy,arc_challenge,hellaswag,winogrande';
const work = mkdtempSync(join(tmpdir(), 'eqat-zero-shot-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));

function dir(name: string): string {
  const d = join(work, name);
  mkdirSync(d, { recursive: true });
  return d;
}

function cli(args: string[]): { status: number | null; stdout: string; stderr: string } {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
}

async function firstDoc(task: string): Promise<McDoc> {
  const t = MC_TASKS[task]!;
  return (await loadTaskDocs(t, taskFiles(DATA, t)!, 1)).docs[0]!;
}

test('requests are lm-eval\'s: templates, target delimiter, HellaSwag cleanup, WinoGrande partial scoring', async () => {
  const piqa = await firstDoc('piqa');
  assert.deepEqual(piqa.requests, [
    { context: 'Question: How do you keep bread fresh for longer?\nAnswer:', continuation: ' Store it in a sealed bag in a cool, dry place.' },
    { context: 'Question: How do you keep bread fresh for longer?\nAnswer:', continuation: ' Leave it open on a sunny windowsill.' },
  ]);
  assert.equal(piqa.gold, 0);
  assert.deepEqual(piqa.choices, ['Store it in a sealed bag in a cool, dry place.', 'Leave it open on a sunny windowsill.']);

  const arc = await firstDoc('arc_easy');
  assert.deepEqual(arc.requests.map((r) => r.context), Array(4).fill('Question: Which of these is a source of light?\nAnswer:'));
  assert.deepEqual(arc.requests.map((r) => r.continuation), [' the Sun', ' the Moon', ' a rock', ' a mirror']);
  // numeric labels: answerKey "1" is the first of choices.label ["1".."4"]; answerKey "B" of A..D is the second
  const easy = (await loadTaskDocs(MC_TASKS['arc_easy']!, taskFiles(DATA, MC_TASKS['arc_easy']!)!)).docs;
  assert.equal(easy[6]!.gold, 0);
  assert.equal(easy[18]!.gold, 1);
  assert.equal(easy[11]!.requests.length, 3);
  assert.equal(easy[12]!.requests.length, 5);

  const hs = (await loadTaskDocs(MC_TASKS['hellaswag']!, taskFiles(DATA, MC_TASKS['hellaswag']!)!)).docs;
  // ctx_b "then" capitalized; the endings cleaned the same way
  assert.equal(hs[0]!.requests[0]!.context, 'Removing ice from car: Then, the man writes over the snow covering the window of a car, and a woman wearing winter clothes smiles. Then');
  assert.equal(hs[0]!.requests[3]!.continuation, ' , the man continues removing the snow on his car.');
  assert.equal(hs[0]!.gold, 3);
  // WikiHow: " [title]" → ". ", other [..] removed, double spaces once to one; capitalize() lower-cases the rest of ctx_b
  assert.equal(hs[2]!.requests[0]!.context, 'Home and Garden: How to water a houseplant. Check the soil. push a finger into the soil up to the first knuckle.');
  // strip() comes first: the space left by "[substeps]" and the period before " [title]" stay
  assert.equal(hs[2]!.requests[0]!.continuation, '  If it feels dry, the plant needs water.. Water slowly.');
  assert.equal(hs[9]!.requests[0]!.context, 'Walking the dog: A woman clips a leash to a small dog. They');
  assert.equal(hs[8]!.choices[0], ' Steep the tea bag in the hot water for three minutes.'); // a leading "[title]" has no space before it to match " [title]"

  const wg = await firstDoc('winogrande');
  assert.deepEqual(wg.requests, [
    { context: 'The trophy does not fit into the brown suitcase because the trophy', continuation: ' is too large.' },
    { context: 'The trophy does not fit into the brown suitcase because the suitcase', continuation: ' is too large.' },
  ]);
  assert.equal(wg.gold, 0);
  const wgAll = (await loadTaskDocs(MC_TASKS['winogrande']!, taskFiles(DATA, MC_TASKS['winogrande']!)!)).docs;
  assert.deepEqual(wgAll[20]!.requests.map((r) => r.context), ['Ben', 'Paul']); // "_" first: the context is the option alone
  assert.equal(wgAll[20]!.gold, 1);

  assert.equal(pyCapitalize('tHE Man'), 'The man');
  assert.equal(pyCapitalize(''), '');
  // brackets within a line only; one pass of "  " → " " leaves 3 of 5 spaces (Python's str.replace does the same)
  assert.equal(hellaswagPreprocess('  a [x] b  [y]   c\n[d\n] e '), 'a b   c\n[d\n] e');
});

test('acc picks the largest summed log-likelihood, acc_norm the largest per character; stderr is lm-eval\'s', () => {
  const doc = (gold: number, choices: string[]): McDoc => ({ gold, choices, requests: choices.map((c) => ({ context: 'q', continuation: ' ' + c })) });
  // -10 over 2 characters (-5/char) vs -12 over 24 (-0.5/char)
  assert.deepEqual(docScores([-10, -12], doc(0, ['ab', 'a much longer choice!!!!'])), { pred: 0, predNorm: 1, acc: 1, accNorm: 0 });
  assert.deepEqual(docScores([-10, -12], doc(1, ['ab', 'a much longer choice!!!!'])), { pred: 0, predNorm: 1, acc: 0, accNorm: 1 });
  // characters are code points, as Python's len: "é🙂" is 2, not 3 UTF-16 units nor 6 bytes
  // -3/2 = -1.5 vs -3.5/3 ≈ -1.17 → 1 (by UTF-16 units -3/3 = -1 would pick 0, by bytes -3/6 too)
  assert.equal(docScores([-3, -3.5], doc(0, ['é🙂', 'abc'])).predNorm, 1);
  assert.equal(argmax([1, 3, 3, 2]), 1); // ties: the first, as numpy.argmax
  assert.equal(argmax([1, NaN, 3]), 1);
  const s = meanStderr([1, 1, 1, 0]);
  assert.equal(s.mean, 0.75);
  assert.equal(s.stderr, 0.25); // sqrt(((3 × 0.0625) + 0.5625) / 3) / sqrt(4)
  assert.equal(meanStderr([1]).stderr, null);
});

test('each distinct sequence runs once; a prefix of another of its doc is read from it; batches are right-padded', () => {
  const seqs = [[5, 6, 7, 8], [5, 6, 7], [5, 6, 7, 8], [9, 9], [5, 6], [5, 6, 7]];
  const reqs = seqs.map((s, i) => ({ ids: Int32Array.from(s), contLen: s.length === 2 ? 1 : 2 }));
  // [5,6] is another doc's: run on its own although a prefix; the last [5,6,7] equals doc 0's and shares its row
  const groups = [0, 0, 0, 1, 2, 3];
  const runs: { T: number; rows: number[][] }[] = [];
  // loss at position t = ids[t+1] / 10 + t / 100, so each request's sum is known
  const { lls, sequences } = scoreRequests(reqs, groups, 2, (ids, count, T, onSeq) => {
    const rows: number[][] = [];
    for (let k = 0; k < count; k++) {
      const row = Array.from(ids.subarray(k * T, (k + 1) * T));
      rows.push(row);
      onSeq(k, Float32Array.from(row, (_, t) => (t + 1 < T ? row[t + 1]! / 10 + t / 100 : 0)));
    }
    runs.push({ T, rows });
  });
  assert.equal(sequences, 3);
  assert.deepEqual(runs, [{ T: 4, rows: [[5, 6, 7, 8], [9, 9, 0, 0]] }, { T: 2, rows: [[5, 6]] }]);
  const ll = (s: number[], c: number) => -s.slice(s.length - c).reduce((a, x, j) => a + x / 10 + (s.length - c - 1 + j) / 100, 0);
  seqs.forEach((s, i) => assert.ok(Math.abs(lls[i]! - ll(s, reqs[i]!.contLen)) < 1e-6, `request ${i}: ${lls[i]} vs ${ll(s, reqs[i]!.contLen)}`));
});

test('every item\'s log-likelihoods match the sequence computed alone (full precision)', async () => {
  const r = await evaluateZeroShot(TINY, { tasks: parseTaskList(ALL, '--tasks'), taskData: DATA, batch: 5, quiet: true, details: true });
  assert.deepEqual(r.tasks.map((t) => [t.task, t.split, t.docs]), [
    ['piqa', 'validation', 24], ['arc_easy', 'test', 22], ['arc_challenge', 'test', 20], ['hellaswag', 'validation', 22], ['winogrande', 'validation', 24],
  ]);
  await checkEveryItem(TINY, r);
  // the fixtures separate the two metrics: some docs are right by one and wrong by the other
  for (const t of ['piqa', 'arc_easy', 'arc_challenge', 'hellaswag']) {
    assert.ok(r.details!.some((d) => d.task === t && d.pred !== d.predNorm), `${t}: no doc where acc and acc_norm choose differently`);
  }
});

test('every item\'s log-likelihoods match on the packed (RTN w4g32) checkpoint, --limit taking the first docs', async () => {
  const rtn = await rtnTiny(4, 32);
  const r = await evaluateZeroShot(rtn, { tasks: parseTaskList('arc_challenge,winogrande,hellaswag', '--tasks'), taskData: DATA, limit: 6, batch: 3, quiet: true, details: true });
  assert.deepEqual(r.tasks.map((t) => [t.docs, t.rows]), [[6, 20], [6, 24], [6, 22]]);
  await checkEveryItem(rtn, r);
});

test('the first doc of every task against a forward written from the reference ops (src/ops/ref), full precision and RTN', async () => {
  for (const model of [TINY, await rtnTiny(4, 32)]) {
    const r = await evaluateZeroShot(model, { tasks: parseTaskList(ALL, '--tasks'), taskData: DATA, limit: 1, batch: 3, quiet: true, details: true });
    const src = WeightSource.open(model);
    const tok = loadTokenizer(model);
    let worst = 0;
    try {
      for (const d of r.details!) {
        const t = MC_TASKS[d.task]!;
        const doc = (await loadTaskDocs(t, taskFiles(DATA, t)!, 1)).docs[d.doc]!;
        doc.requests.forEach((req, c) => {
          const ref = refLoglikelihood(src, tok, req.context, req.continuation);
          worst = Math.max(worst, Math.abs(d.lls[c]! - ref));
          assert.ok(Math.abs(d.lls[c]! - ref) <= 2e-4 + 2e-5 * Math.abs(ref), `${model} ${d.task} doc ${d.doc} choice ${c}: ${d.lls[c]} vs reference ${ref}`);
        });
      }
    } finally {
      src.close();
    }
    process.stdout.write(`# ${model}: ${r.requests} log-likelihoods against the reference ops, largest difference ${worst.toExponential(2)}\n`);
  }
});

test('acc and acc_norm on items built to split them: a one-letter choice beside a long sentence', async () => {
  // any language model gives the long continuation a far lower sum but a higher per-character
  // log-likelihood than a single letter: acc picks "x", acc_norm the sentence
  const long = 'Fill the kettle with fresh water, set it on the stove and wait until it boils.';
  const golds = [0, 0, 0, 1];
  const rows = golds.map((label, i) => ({ goal: `How do you make tea number ${i + 1}?`, sol1: 'x', sol2: long, label }));
  const d = dir('split-metrics');
  writeFileSync(join(d, 'piqa.jsonl'), rows.map((x) => JSON.stringify(x)).join('\n'));
  const r = await evaluateZeroShot(TINY, { tasks: parseTaskList('piqa', '--tasks'), taskData: d, quiet: true, details: true });
  assert.deepEqual(r.details!.map((x) => [x.pred, x.predNorm]), [[0, 1], [0, 1], [0, 1], [0, 1]]);
  const [t] = r.tasks;
  // by hand: acc = [1,1,1,0] → 0.75, acc_norm = [0,0,0,1] → 0.25; both stderr sqrt((3·0.25² + 0.75²) / 3) / sqrt(4) = 0.25
  assert.equal(t!.acc, 0.75);
  assert.equal(t!.accNorm, 0.25);
  assert.equal(t!.accStderr, 0.25);
  assert.equal(t!.accNormStderr, 0.25);
  assert.equal(r.averageAcc, 0.75);
});

test('eqat eval --tasks prints the table and the same as JSON; with --data it gives the perplexity too', () => {
  const table = cli(['eval', '--model', TINY, '--tasks', ALL, '--task-data', DATA, '--limit', '4']);
  assert.equal(table.status, 0, table.stderr);
  assert.match(table.stdout, /^task\s+split\s+docs\s+acc\s+± stderr\s+acc_norm\s+± stderr$/m);
  assert.match(table.stdout, /^winogrande\s+validation\s+4\s+\d\.\d{4}\s+\d\.\d{4}\s+—\s+—$/m);
  assert.match(table.stdout, /average acc over 5 tasks \(the paper's Avg\.\): \d\.\d{4}/);
  const text = join(dir('cli-ppl'), 'ppl.txt');
  writeFileSync(text, readFileSync(join(REPO, 'fixtures', 'text', 'calib-sample.txt'), 'utf8').slice(0, 2000));
  const json = cli(['eval', '--model', TINY, '--tasks', 'piqa,winogrande', '--task-data', DATA, '--limit', '4', '--json', '--data', text, '--seqlen', '64', '--max-windows', '2']);
  assert.equal(json.status, 0, json.stderr);
  const out = JSON.parse(json.stdout.trim().split('\n').at(-1)!) as { ppl: number; zeroShot: ZeroShotResult };
  assert.ok(out.ppl > 1);
  assert.deepEqual(out.zeroShot.tasks.map((t) => t.task), ['piqa', 'winogrande']);
  assert.equal(out.zeroShot.averageAcc, (out.zeroShot.tasks[0]!.acc + out.zeroShot.tasks[1]!.acc) / 2);
  assert.equal(out.zeroShot.tasks[1]!.accNorm, null);
});

test('bad input: unknown tasks (with suggestions), --limit 0, missing columns, wrong types, empty splits, absent data', async () => {
  assert.throws(() => parseTaskList('piqa,hellaswg', '--tasks'), /--tasks: no task "hellaswg"; did you mean hellaswag\?/);
  assert.throws(() => parseTaskList('arc', '--tasks'), /did you mean arc_easy or arc_challenge\?/);
  assert.throws(() => parseTaskList('mmlu', '--tasks'), /no task "mmlu" \(tasks: piqa, arc_easy, arc_challenge, hellaswag, winogrande\)/);
  assert.throws(() => parseTaskList(' , ', '--tasks'), /--tasks: no task named/);

  let r = cli(['eval', '--model', TINY, '--tasks', 'arc-easy', '--task-data', DATA]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /no task "arc-easy"; did you mean arc_easy\?/);
  r = cli(['eval', '--model', TINY, '--tasks', 'piqa', '--task-data', DATA, '--limit', '0']);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /--limit must be >= 1, got 0/);
  r = cli(['eval', '--model', TINY]);
  assert.equal(r.status, 2);
  assert.match(r.stderr, /pass --data FILE \(perplexity\) or --tasks LIST \(zero-shot\)/);
  await assert.rejects(loadTasks(parseTaskList('piqa', '--tasks'), DATA, 0), /--limit must be an integer >= 1, got 0/);

  const piqa = MC_TASKS['piqa']!;
  const bad = dir('bad');
  const jsonl = (name: string, rows: object[]) => {
    const f = join(bad, name);
    writeFileSync(f, rows.map((x) => JSON.stringify(x)).join('\n'));
    return f;
  };
  await assert.rejects(loadTaskDocs(piqa, [jsonl('no-sol2.jsonl', [{ goal: 'g', sol1: 'a', label: 0 }])]), /no-sol2\.jsonl: no column "sol2" \(columns: goal, sol1, label\); piqa reads the baber\/piqa schema: goal \(string\), sol1 \(string\), sol2 \(string\), label \(int\)/);
  // a parquet file of another dataset's schema
  await assert.rejects(loadTaskDocs(piqa, [taskFiles(DATA, MC_TASKS['winogrande']!)![0]!]), /validation-00000-of-00001\.parquet: no column "goal", "sol1", "sol2", "label" \(columns: sentence, option1, option2, answer\)/);
  await assert.rejects(loadTaskDocs(piqa, [jsonl('label.jsonl', [{ goal: 'g', sol1: 'a', sol2: 'b', label: 0 }, { goal: 'g', sol1: 'a', sol2: 'b', label: 'x' }])]), /label\.jsonl: row 2: column "label" must be an integer, got string "x"/);
  await assert.rejects(loadTaskDocs(piqa, [jsonl('label2.jsonl', [{ goal: 'g', sol1: 'a', sol2: 'b', label: 2 }])]), /row 1: label must be 0 or 1, got 2/);
  await assert.rejects(loadTaskDocs(piqa, [jsonl('empty.jsonl', [])]), /empty\.jsonl: the validation split of piqa has no rows/);
  writeFileSync(join(bad, 'broken.jsonl'), '{"goal": ');
  await assert.rejects(loadTaskDocs(piqa, [join(bad, 'broken.jsonl')]), /broken\.jsonl: line 1: invalid JSON/);
  await assert.rejects(loadTaskDocs(MC_TASKS['winogrande']!, [jsonl('wg.jsonl', [{ sentence: 'no blank here', option1: 'a', option2: 'b', answer: '1' }])]), /row 1: sentence has no "_" to fill/);
  await assert.rejects(loadTaskDocs(MC_TASKS['arc_easy']!, [jsonl('arc.jsonl', [{ question: 'q', choices: { text: ['a', 'b'], label: ['A', 'B'] }, answerKey: 'C' }])]), /row 1: answerKey "C" is not one of choices.label \["A","B"\]/);
  await assert.rejects(loadTaskDocs(MC_TASKS['hellaswag']!, [jsonl('hs.jsonl', [{ activity_label: 'a', ctx_a: 'b', ctx_b: 'c', endings: 'not a list', label: '0' }])]), /row 1: column "endings" must be list of strings, got string "not a list"/);

  const none = dir('none');
  await assert.rejects(loadTasks(parseTaskList('piqa', '--tasks'), none, undefined), /--task-data .*none: no data for piqa \(looked for .*piqa\.parquet, .*piqa\.jsonl, .*piqa\/validation\.parquet, .*piqa\/validation\.jsonl, .*piqa\/validation-\*\.parquet\)/);
  await assert.rejects(loadTasks(parseTaskList('piqa', '--tasks'), join(work, 'missing'), undefined), /--task-data .*missing: does not exist/);
  // the data is read before the model: a bad task file fails fast even with a model that is fine
  cpSync(join(bad, 'no-sol2.jsonl'), join(dir('bad-piqa'), 'piqa.jsonl'));
  r = cli(['eval', '--model', TINY, '--tasks', 'piqa', '--task-data', join(work, 'bad-piqa')]);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /piqa\.jsonl: no column "sol2"/);
});

test('without --task-data the splits come from the hub\'s parquet revision through the Hugging Face cache, then offline from it', async () => {
  const hub = new FakeHub();
  const sha = fakeSha('piqa-parquet');
  const piqa = MC_TASKS['piqa']!;
  hub.add({ type: 'dataset', id: piqa.hub.repo, refs: { [HUB_PARQUET_REVISION]: sha }, commits: [{ sha, files: { [piqa.hub.path]: readFileSync(join(DATA, 'piqa.parquet')) } }] });
  const endpoint = await hub.start();
  const cacheDir = dir('hf-cache');
  try {
    const online = await evaluateZeroShot(TINY, { tasks: [piqa], limit: 3, quiet: true, hub: { cacheDir, endpoint, token: null, offline: false, quiet: true } });
    assert.equal(online.tasks[0]!.files[0], join(cacheDir, 'datasets--baber--piqa', 'snapshots', sha, 'default', 'validation', '0000.parquet'));
    const local = await evaluateZeroShot(TINY, { tasks: [piqa], limit: 3, taskData: DATA, quiet: true });
    assert.equal(online.tasks[0]!.acc, local.tasks[0]!.acc);
    const offline = await evaluateZeroShot(TINY, { tasks: [piqa], limit: 3, quiet: true, hub: { cacheDir, endpoint: 'http://127.0.0.1:9', offline: true, quiet: true } });
    assert.equal(offline.tasks[0]!.acc, local.tasks[0]!.acc);
    // a cold cache offline, and a task whose dataset the hub does not have: errors naming the repo
    await assert.rejects(evaluateZeroShot(TINY, { tasks: [piqa], quiet: true, hub: { cacheDir: dir('cold'), offline: true, quiet: true } }), /baber\/piqa/);
    await assert.rejects(evaluateZeroShot(TINY, { tasks: [MC_TASKS['winogrande']!], quiet: true, hub: { cacheDir, endpoint, token: null, offline: false, quiet: true } }), /allenai\/winogrande/);
  } finally {
    await hub.stop();
  }
});

// quantize's eval section: the RTN w4g32 output of llama-tiny, evaluated with the full-precision
// baseline (the default) by runQuantize, and without it (--no-eval-baseline) through the CLI
const PPL_TEXT = join(work, 'ppl.txt');
writeFileSync(PPL_TEXT, readFileSync(join(REPO, 'fixtures', 'text', 'calib-sample.txt'), 'utf8').slice(0, 4000));
const Q_BASE = { model: TINY, calib: join(REPO, 'fixtures', 'text', 'calib-sample.txt'), wbits: 4, groupSize: 32, blockAp: { epochs: 0 }, e2eQp: { epochs: 0 } };
const Q_OUT = join(work, 'q-w4g32');

type Figures = { model: string; perplexity: Record<string, EvalResult>; zeroShot: ZeroShotResult | null; seconds: number };
type EvalJson = Figures & { baseline?: Figures | null; baselineError?: string };

/** A fraction as report.html shows an accuracy. */
const pct = (v: number): string => `${(v * 100).toFixed(2)}%`;

test('quantize --eval-tasks --eval-ppl: the output and the full-precision model evaluated into eqat-eval.json, the result and the report; bad eval input refused before any work', async () => {
  const text = PPL_TEXT;
  const base = Q_BASE;
  const out = Q_OUT;
  const r = await runQuantize(resolveRecipe({}, { ...base, out, eval: { tasks: 'arc_easy,winogrande', taskData: DATA, limit: 4, ppl: text, pplSeqlen: 32 } }, 'command line'), { quiet: true });
  const written = JSON.parse(readFileSync(join(out, 'eqat-eval.json'), 'utf8')) as EvalJson;
  assert.deepEqual(written, JSON.parse(JSON.stringify(r.eval)));
  // the same numbers as eval run on the output on its own
  const alone = await evaluateZeroShot(out, { tasks: parseTaskList('arc_easy,winogrande', '--tasks'), taskData: DATA, limit: 4, quiet: true });
  assert.deepEqual(written.zeroShot!.tasks.map((t) => [t.task, t.docs, t.acc, t.accNorm]), alone.tasks.map((t) => [t.task, t.docs, t.acc, t.accNorm]));
  assert.ok(written.perplexity[text]!.ppl > 1 && written.perplexity[text]!.windows > 0);
  assert.deepEqual((JSON.parse(readFileSync(join(out, 'recipe.json'), 'utf8')) as { eval: unknown }).eval, { tasks: 'arc_easy,winogrande', task_data: DATA, limit: 4, ppl: text, ppl_seqlen: 32, batch: 4, baseline: true });

  // the baseline: what `eqat eval` prints for the full-precision model on the same text, seqlen and tasks
  const fpRun = cli(['eval', '--model', TINY, '--data', text, '--seqlen', '32', '--tasks', 'arc_easy,winogrande', '--task-data', DATA, '--limit', '4', '--json', '--quiet']);
  assert.equal(fpRun.status, 0, fpRun.stderr);
  const fp = JSON.parse(fpRun.stdout.trim().split('\n').at(-1)!) as EvalResult & { zeroShot: ZeroShotResult };
  const b = written.baseline!;
  assert.equal(b.model, resolve(TINY));
  const { seconds: _s1, ...fpPpl } = b.perplexity[text]!;
  const { seconds: _s2, ...evalPpl } = fp;
  assert.deepEqual(fpPpl, { ppl: evalPpl.ppl, nll: evalPpl.nll, tokens: evalPpl.tokens, predictions: evalPpl.predictions, windows: evalPpl.windows, seqlen: evalPpl.seqlen });
  const row = (t: ZeroShotResult['tasks'][number]) => [t.task, t.split, t.docs, t.acc, t.accStderr, t.accNorm, t.accNormStderr];
  assert.deepEqual(b.zeroShot!.tasks.map(row), fp.zeroShot.tasks.map(row));
  assert.equal(b.zeroShot!.averageAcc, fp.zeroShot.averageAcc);
  // same windows, another model: the quantized perplexity is not the full-precision one
  assert.equal(written.perplexity[text]!.windows, b.perplexity[text]!.windows);
  assert.notEqual(written.perplexity[text]!.ppl, b.perplexity[text]!.ppl);

  // report.html: both numbers side by side, with the change
  const html = readFileSync(join(out, 'report.html'), 'utf8');
  const q = written.perplexity[text]!.ppl;
  assert.ok(html.includes(`<tr><td>${text}</td><td>${fmt(fp.ppl)}</td><td>${fmt(q)}</td><td>${q > fp.ppl ? '+' : '−'}${fmt(Math.abs(q - fp.ppl))} (`), 'the perplexity row: full precision, quantized, change');
  for (const t of written.zeroShot!.tasks) {
    const f = fp.zeroShot.tasks.find((x) => x.task === t.task)!;
    assert.ok(html.includes(`<tr><td>${t.task}</td><td>${pct(f.acc)}</td><td>${pct(t.acc)}</td><td>`), `the ${t.task} row: acc before and after`);
  }
  assert.ok(html.includes(`<tr><td>average</td><td>${pct(fp.zeroShot.averageAcc)}</td><td>${pct(written.zeroShot!.averageAcc)}</td>`));

  // refused before Block-AP: nothing is written
  const bad = join(work, 'q-bad');
  assert.throws(() => resolveRecipe({}, { ...base, out: bad, eval: { tasks: 'piqa,winogrand' } }, 'command line'), /command line: eval\.tasks: no task "winogrand"; did you mean winogrande\?/);
  await assert.rejects(runQuantize(resolveRecipe({}, { ...base, out: bad, eval: { ppl: join(work, 'absent.txt') } }, 'command line'), { quiet: true }), /eval\.ppl \(--eval-ppl\) .*absent\.txt: does not exist/);
  await assert.rejects(runQuantize(resolveRecipe({}, { ...base, out: bad, eval: { ppl: 'redpajama' } }, 'command line'), { quiet: true }), /redpajama is a calibration dataset with no perplexity protocol/);
  await assert.rejects(runQuantize(resolveRecipe({}, { ...base, out: bad, eval: { tasks: 'piqa', taskData: dir('q-empty') } }, 'command line'), { quiet: true }), /no data for piqa/);
  assert.equal(existsSync(bad) || existsSync(bad + '.block-ap'), false);
  const r2 = cli(['quantize', '--model', TINY, '--calib', base.calib, '--wbits', '4', '--out', bad, '--eval-tasks', 'hellaswag', '--eval-limit=-1']);
  assert.equal(r2.status, 2);
  assert.match(r2.stderr, /--eval-limit must be >= 0, got -1/);
  const r3 = cli(['quantize', '--model', TINY, '--calib', base.calib, '--wbits', '4', '--out', bad, '--eval-ppl', text, '--eval-baseline', '--no-eval-baseline']);
  assert.equal(r3.status, 2);
  assert.match(r3.stderr, /--eval-baseline and --no-eval-baseline: give one or the other/);
  assert.equal(existsSync(bad) || existsSync(bad + '.block-ap'), false);
});

test('quantize --no-eval-baseline: no baseline in eqat-eval.json, the --json result or the report; the checkpoint is the same bytes with or without it', () => {
  assert.ok(existsSync(join(Q_OUT, 'eqat-eval.json')), 'the output of the test before');
  const out = join(work, 'q-w4g32-no-baseline');
  const r = cli(['quantize', '--model', TINY, '--calib', Q_BASE.calib, '--wbits', '4', '--group-size', '32', '--block-ap-epochs', '0', '--e2e-qp-epochs', '0', '--out', out, '--eval-ppl', PPL_TEXT, '--eval-ppl-seqlen', '32', '--no-eval-baseline', '--json', '--quiet']);
  assert.equal(r.status, 0, r.stderr);
  const result = JSON.parse(r.stdout.trim().split('\n').at(-1)!) as { eval: EvalJson };
  const written = JSON.parse(readFileSync(join(out, 'eqat-eval.json'), 'utf8')) as EvalJson;
  for (const ev of [result.eval, written]) {
    assert.equal('baseline' in ev || 'baselineError' in ev, false);
    assert.deepEqual(Object.keys(ev), ['model', 'perplexity', 'zeroShot', 'seconds']);
  }
  const withBaseline = JSON.parse(readFileSync(join(Q_OUT, 'eqat-eval.json'), 'utf8')) as EvalJson;
  assert.equal(written.perplexity[PPL_TEXT]!.ppl, withBaseline.perplexity[PPL_TEXT]!.ppl);
  const html = readFileSync(join(out, 'report.html'), 'utf8');
  assert.ok(html.includes('<h2>Evaluation of the quantized model</h2>'));
  assert.ok(html.includes(`<tr><td>${PPL_TEXT}</td><td>${fmt(written.perplexity[PPL_TEXT]!.ppl)}</td>`));
  assert.doesNotMatch(html, /full precision<\/th>/);
  // only the records differ between the two outputs
  const records = ['eqat-eval.json', 'eqat-recipe.json', 'recipe.json', 'report.html', 'block-ap-log.jsonl', 'e2e-qp-log.jsonl'];
  const files = readdirSync(out).filter((f) => !records.includes(f)).sort();
  assert.deepEqual(readdirSync(Q_OUT).filter((f) => !records.includes(f)).sort(), files);
  assert.ok(files.some((f) => f.endsWith('.safetensors')));
  for (const f of files) assert.ok(readFileSync(join(out, f)).equals(readFileSync(join(Q_OUT, f))), `${f}: the same bytes`);
});

test('a baseline that fails (the full-precision model gone after Block-AP) leaves the checkpoint and its evaluation, with the reason', async () => {
  const model = join(work, 'tiny-copy');
  cpSync(TINY, model, { recursive: true });
  const out = join(work, 'q-baseline-fails');
  const r = await runQuantize(resolveRecipe({}, { ...Q_BASE, model, out, eval: { ppl: PPL_TEXT, pplSeqlen: 32 } }, 'command line'), {
    quiet: true,
    onEvent: (e) => {
      if (e.type === 'done' && e.phase === 'block-ap') renameSync(model, model + '.gone');
    },
  });
  const written = JSON.parse(readFileSync(join(out, 'eqat-eval.json'), 'utf8')) as EvalJson;
  assert.deepEqual(written, JSON.parse(JSON.stringify(r.eval)));
  assert.equal(written.baseline, null);
  assert.match(written.baselineError!, /tiny-copy.*does not exist/);
  assert.ok(written.perplexity[PPL_TEXT]!.ppl > 1, 'the output is evaluated');
  assert.ok(existsSync(join(out, 'model.safetensors')) || readdirSync(out).some((f) => f.endsWith('.safetensors')), 'the checkpoint is there');
  const html = readFileSync(join(out, 'report.html'), 'utf8');
  assert.ok(html.includes('The evaluation of the full-precision model failed: '));
});
