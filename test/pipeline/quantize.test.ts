// `eqat quantize` on the bundled llama-tiny: both phases from a YAML recipe plus flag
// overrides, the recorded recipe re-loads, a run killed (SIGKILL) during its E2E-QP phase
// resumes that phase to the same checkpoint, a finished Block-AP phase is not reused after the
// calibration data changed, and bad recipes fail before any work.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, TINY } from '../golden.js';
import { runKillable } from '../util.js';
import { loadRecipeFile, mergeRecipe } from '../../src/pipeline/recipe.js';
import { E2E_QP_STATE_FILE } from '../../src/pipeline/e2e-qp.js';
import { resolveRecipe, runQuantize } from '../../src/pipeline/quantize.js';

const CLI = join(REPO, 'dist', 'src', 'cli', 'main.js');
const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const work = mkdtempSync(join(tmpdir(), 'eqat-quantize-'));
const env = { ...process.env, EQAT_CACHE_DIR: join(work, 'cache') };

function eqat(args: string[]): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', env });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

const recipe = join(work, 'recipe.yaml');

test('quantize runs Block-AP then E2E-QP from a YAML recipe with flag overrides', () => {
  writeFileSync(
    recipe,
    [
      `model: ${TINY}`,
      `calib: ${CALIB}`,
      'wbits: 2',
      'group_size: 32',
      'block_ap: {train_size: 8, val_size: 2, seqlen: 64, epochs: 1}',
      'e2e_qp: {train_size: 32, seqlen: 64, batch_size: 4, micro_batch_size: 2, lr: 1.0e-4}',
      '',
    ].join('\n'),
  );
  const out = join(work, 'q');
  const r = eqat(['quantize', '--recipe', recipe, '--out', out, '--seed', '5', '--quiet', '--json']);
  assert.equal(r.status, 0, r.stderr);
  for (const f of ['config.json', 'recipe.json', 'eqat-recipe.json', 'e2e-qp-log.jsonl', 'block-ap-log.jsonl', 'tokenizer.json']) {
    assert.ok(existsSync(join(out, f)), f);
  }
  assert.ok(existsSync(join(out + '.block-ap', 'config.json')), 'the Block-AP checkpoint is kept');
  const again = mergeRecipe(loadRecipeFile(join(out, 'recipe.json')));
  assert.equal(again.seed, 5);
  assert.equal(again.e2eQp.microBatchSize, 2);
  assert.equal(again.blockAp.trainSize, 8);
  const ev = eqat(['eval', '--model', out, '--data', join(REPO, 'fixtures', 'text', 'eval-sample.txt'), '--seqlen', '128', '--max-windows', '4', '--json']);
  assert.equal(ev.status, 0, ev.stderr);
  const ppl = (JSON.parse(ev.stdout.trim().split('\n').pop()!) as { ppl: number }).ppl;
  assert.ok(Number.isFinite(ppl) && ppl > 1, `ppl ${ppl}`);
});

test('a quantize killed (SIGKILL) during E2E-QP resumes that phase to the same checkpoint', async () => {
  const ref = join(work, 'q'); // the uninterrupted run of the first test
  assert.ok(existsSync(ref), 'needs the first test');
  const out = join(work, 'q-killed');
  const args = ['quantize', '--recipe', recipe, '--out', out, '--seed', '5', '--quiet'];
  // 8 E2E-QP steps, a save after each: kill at the first save
  const state = join(out + '.partial', E2E_QP_STATE_FILE);
  assert.equal(await runKillable([CLI, ...args, '--save-every', '1'], { killWhen: () => existsSync(state), env }), 'SIGKILL');
  assert.ok(!existsSync(out) && existsSync(state));
  // a resume with another E2E-QP setting is refused, naming the recipe key and the quantize flag
  const refused = eqat([...args, '--e2e-qp-lr', '0.5']);
  assert.notEqual(refused.status, 0);
  assert.match(refused.stderr, /e2e_qp\.lr \(--e2e-qp-lr\) is [0-9.e-]+ in the saved state, 0\.5 now/);
  assert.ok(!existsSync(out) && existsSync(state), 'a refused resume leaves the state as it was');
  const r = eqat([...args, '--json']);
  assert.equal(r.status, 0, r.stderr);
  const summary = JSON.parse(r.stdout.trim().split('\n').pop()!) as { blockApSeconds: number; e2eQpResumedFrom: number };
  assert.equal(summary.blockApSeconds, 0, 'the finished Block-AP phase is reused');
  assert.ok(summary.e2eQpResumedFrom >= 1 && summary.e2eQpResumedFrom < 8, `resumed after step ${summary.e2eQpResumedFrom}`);
  // byte for byte, except timing fields and (in the records) the output path
  const files = readdirSync(ref).filter((f) => f !== 'report.html').sort(); // the report shows the seconds
  assert.deepEqual(readdirSync(out).filter((f) => f !== 'report.html').sort(), files);
  const normal = (text: string, dir: string) =>
    text.replaceAll(dir, 'OUT').replace(/"seconds": ?[-+0-9.eE]+/g, '"seconds":_').replace(/"peak_rss_bytes": ?[0-9]+/g, '"peak_rss_bytes":_');
  for (const f of files) {
    const [a, b] = [readFileSync(join(ref, f)), readFileSync(join(out, f))];
    if (/\.json(l)?$/.test(f) && !a.equals(b)) assert.equal(normal(b.toString(), out), normal(a.toString(), ref), `${f} differs beyond timing and paths`);
    else assert.ok(a.equals(b), `${f} differs`);
  }
});

test('bad recipes fail before any work, naming the key', () => {
  const cases: [string, RegExp][] = [
    ['wbits: 2\nblock_ap: {lr: 1}', /block_ap\.lr: unknown key/],
    ['wbits: "two"', /wbits: expected an integer/],
    ['wbits: 2\ngroup_size: 48', /group_size: 48 does not divide/],
  ];
  for (const [line, want] of cases) {
    const recipe = join(work, 'bad.yaml');
    writeFileSync(recipe, `model: ${TINY}\ncalib: ${CALIB}\n${line}\n`);
    const out = join(work, 'bad-out');
    const r = eqat(['quantize', '--recipe', recipe, '--out', out]);
    assert.notEqual(r.status, 0);
    assert.match(r.stderr, want);
    assert.ok(!existsSync(out) && !existsSync(out + '.block-ap') && !existsSync(out + '.block-ap.partial'));
  }
  assert.ok(readdirSync(work).every((f) => !f.startsWith('bad-out')));
});

test('a finished Block-AP phase is not reused once the calibration data changed at the same path; --restart runs it again', async () => {
  process.env['EQAT_CACHE_DIR'] = join(work, 'cache');
  const calib = join(work, 'calib-copy.txt');
  const text = readFileSync(CALIB, 'utf8').split('\n\n').slice(0, 40).join('\n\n'); // small: tokenised twice
  writeFileSync(calib, text);
  const recipeFor = (out: string) =>
    resolveRecipe({}, {
      model: TINY,
      calib,
      out,
      wbits: 2,
      groupSize: 32,
      blockAp: { trainSize: 4, valSize: 2, seqlen: 64, epochs: 1 },
      e2eQp: { trainSize: 8, seqlen: 32, batchSize: 4, microBatchSize: 2 },
    }, 'test');
  const first = join(work, 'calib-first');
  await runQuantize(recipeFor(first), { quiet: true });
  // the same command with another --out finds this Block-AP checkpoint at its <out>.block-ap
  const out = join(work, 'calib-changed');
  cpSync(first + '.block-ap', out + '.block-ap', { recursive: true });
  const { atime, mtime } = statSync(calib);
  writeFileSync(calib, text.replace('e', 'E')); // same size and time, other contents
  utimesSync(calib, atime, mtime);
  await assert.rejects(runQuantize(recipeFor(out), { quiet: true }), (e: Error) => {
    assert.ok(e.message.startsWith(`${out}.block-ap: a Block-AP checkpoint from other inputs is there: the calibration data ${calib} has changed (`), e.message);
    assert.match(e.message, /when it was made; .* now\); pass --restart to discard it and run Block-AP again, or choose another --out$/);
    return true;
  });
  assert.ok(existsSync(out + '.block-ap') && !existsSync(out) && !existsSync(out + '.partial'), 'a refusal changes nothing');
  const record = join(out + '.block-ap', 'eqat-recipe.json');
  writeFileSync(record, '{"eqat": ');
  await assert.rejects(runQuantize(recipeFor(out), { quiet: true }), (e: Error) => {
    assert.ok(e.message.startsWith(`${out}.block-ap: a Block-AP checkpoint whose record ${record} cannot be read (`), e.message);
    assert.match(e.message, /; pass --restart to discard it and run Block-AP again, or choose another --out$/);
    return true;
  });
  const r = await runQuantize(recipeFor(out), { quiet: true, restart: true });
  assert.ok(r.blockApPhases !== null && r.blockApSeconds > 0, 'Block-AP ran again on the new data');
  const rec = JSON.parse(readFileSync(join(out + '.block-ap', 'eqat-recipe.json'), 'utf8')) as { inputs: { data: { sha256: string } } };
  assert.equal(rec.inputs.data.sha256, createHash('sha256').update(readFileSync(calib)).digest('hex'));
});

test('a finished Block-AP phase is not reused once a model file changed at the same path', async () => {
  process.env['EQAT_CACHE_DIR'] = join(work, 'cache');
  const model = join(work, 'model-copy');
  cpSync(TINY, model, { recursive: true });
  const recipeFor = (out: string) =>
    resolveRecipe({}, {
      model,
      calib: CALIB,
      out,
      wbits: 2,
      groupSize: 32,
      blockAp: { trainSize: 4, valSize: 2, seqlen: 32, epochs: 1 },
      e2eQp: { trainSize: 4, seqlen: 32, batchSize: 2, microBatchSize: 1 },
    }, 'test');
  const out = join(work, 'model-changed');
  await runQuantize(recipeFor(out), { quiet: true });
  rmSync(out, { recursive: true });
  // one weight's last byte flipped: same size and time, another model
  const weights = join(model, 'model.safetensors');
  const bytes = readFileSync(weights);
  const { atime, mtime } = statSync(weights);
  bytes[bytes.length - 1] = bytes[bytes.length - 1]! ^ 1;
  writeFileSync(weights, bytes);
  utimesSync(weights, atime, mtime);
  await assert.rejects(runQuantize(recipeFor(out), { quiet: true }), (e: Error) => {
    assert.ok(e.message.startsWith(`${out}.block-ap: a Block-AP checkpoint from other inputs is there: the model file ${weights} has changed (`), e.message);
    assert.match(e.message, /pass --restart to discard it and run Block-AP again, or choose another --out$/);
    return true;
  });
  assert.ok(!existsSync(out) && !existsSync(out + '.partial'), 'a refusal writes nothing');
});

test.after(() => rmSync(work, { recursive: true, force: true }));
