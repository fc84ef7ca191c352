// The library entry point (src/index.ts) on the bundled llama-tiny: each function gives what its
// command gives with the command's defaults (checkpoints and exports byte for byte, perplexity and
// generated ids exactly); runs report their progress as typed events that match the log they
// write; an AbortSignal aborted mid-Block-AP (and mid-E2E-QP) stops the run at its next step with
// an AbortError saying what was kept, leaving the resumable .partial, and the same call again
// finishes the checkpoint of an uninterrupted run byte for byte; bad options are refused naming
// the setting before any work; the example file (examples/quantize.mjs) runs.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  AbortedError,
  blockAp,
  e2eQp,
  evaluate,
  exportModel,
  generate,
  loadModel,
  quantize,
  RecipeError,
  UsageError,
  type BlockApOptions,
  type EqatEvent,
} from '../../src/index.js';
import { REPO, TINY } from '../golden.js';

// keep the token-stream cache inside the test's own temp space
process.env['EQAT_CACHE_DIR'] = mkdtempSync(join(tmpdir(), 'eqat-cache-'));

const CLI = join(REPO, 'dist', 'src', 'cli', 'main.js');
const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const EVAL = join(REPO, 'fixtures', 'text', 'eval-sample.txt');
const TASKS = join(REPO, 'test', 'fixtures', 'tasks');
const WORK = mkdtempSync(join(tmpdir(), 'eqat-api-'));

function cli(...args: string[]): string {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8' });
  assert.equal(r.status, 0, `eqat ${args.join(' ')}: ${r.stderr}`);
  return r.stdout;
}

/** Every file of a checkpoint by name, but the logs and report.html (they carry seconds); eqat-recipe.json without the peak memory. */
function checkpointFiles(dir: string): Map<string, Buffer> {
  const m = new Map<string, Buffer>();
  for (const f of readdirSync(dir).sort()) {
    if (f.endsWith('-log.jsonl') || f === 'report.html') continue; // seconds
    const bytes = readFileSync(join(dir, f));
    m.set(f, f === 'eqat-recipe.json' ? Buffer.from(bytes.toString().replace(/"peak_rss_bytes": ?[0-9]+/g, '"peak_rss_bytes":_')) : bytes);
  }
  return m;
}

function assertSameFiles(a: string, b: string, what: string): void {
  const x = checkpointFiles(a);
  const y = checkpointFiles(b);
  assert.deepEqual([...y.keys()], [...x.keys()], what);
  for (const [f, bytes] of x) assert.ok(bytes.equals(y.get(f)!), `${what}: ${f} differs`);
}

test('each function gives what its command gives, with the command defaults; events follow the run', async () => {
  // Block-AP round-to-nearest, neither giving the group size (the command's default)
  const viaCli = join(WORK, 'rtn-cli');
  const viaApi = join(WORK, 'rtn-api');
  cli('block-ap', '--model', TINY, '--out', viaCli, '--wbits', '4', '--epochs', '0', '--quiet');
  const events: EqatEvent[] = [];
  const r = await blockAp({ model: TINY, out: viaApi, wbits: 4, epochs: 0, onEvent: (e) => events.push(e) });
  assert.equal(r.blocks.length, 4);
  assertSameFiles(viaCli, viaApi, 'block-ap');
  assert.equal(JSON.parse(readFileSync(join(viaApi, 'quantize_config.json'), 'utf8')).group_size, 128);
  const types = events.map((e) => (e.type === 'block-start' || e.type === 'block-done' || e.type === 'epoch' ? `${e.type} ${e.block}/${e.of}` : e.type));
  const perBlock = [0, 1, 2, 3].flatMap((b) => [`block-start ${b}/4`, `epoch ${b}/4`, `block-done ${b}/4`]);
  assert.deepEqual(types, ['phase', ...perBlock, 'done']);
  assert.deepEqual(events[0], { type: 'phase', phase: 'block-ap', out: viaApi, resumedFrom: 0, reused: false });
  const log = readFileSync(join(viaApi, 'block-ap-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as object);
  assert.deepEqual(events.filter((e) => e.type === 'epoch').map(({ type: _t, of: _o, ...rest }) => rest), log);

  // evaluate: the command's perplexity and zero-shot accuracy, exactly
  const tasks = ['--tasks', 'piqa,winogrande', '--task-data', TASKS, '--limit', '3'];
  const evalJson = JSON.parse(cli('eval', '--model', viaApi, '--data', EVAL, '--seqlen', '64', '--max-windows', '6', ...tasks, '--json').trim().split('\n').pop()!);
  const evalEvents: EqatEvent[] = [];
  const ev = await evaluate({ model: viaApi, data: EVAL, seqlen: 64, maxWindows: 6, tasks: ['piqa', 'winogrande'], taskData: TASKS, limit: 3, onEvent: (e) => evalEvents.push(e) });
  assert.equal(ev.perplexity!.nll, evalJson.nll);
  assert.equal(ev.perplexity!.windows, 6);
  const scores = (r: { tasks: { task: string; docs: number; acc: number; accNorm: number | null }[] }) => r.tasks.map(({ task, docs, acc, accNorm }) => ({ task, docs, acc, accNorm }));
  assert.deepEqual(scores(ev.zeroShot!), scores(evalJson.zeroShot));
  assert.deepEqual(ev.zeroShot!.tasks.map((t) => t.docs), [3, 3]);
  assert.equal((await evaluate({ model: viaApi, data: EVAL, seqlen: 64, maxWindows: 1 })).zeroShot, null);
  const steps = evalEvents.filter((e) => e.type === 'eval-step');
  assert.ok(steps.length > 0 && steps.at(-1)!.done === steps.at(-1)!.of, 'eval-step events reach the end');
  assert.deepEqual([evalEvents[0]!.type, evalEvents.at(-1)!.type], ['phase', 'done']);

  // generate: the command's ids; a loaded model gives the same and stays open
  const genJson = JSON.parse(cli('generate', '--model', viaApi, '--prompt', 'The cat', '--max-new-tokens', '6', '--json'));
  const g = await generate({ model: viaApi, prompt: 'The cat', maxNewTokens: 6 });
  assert.deepEqual(g.outputIds, genJson.output_ids);
  assert.equal(g.text, genJson.text);
  const m = await loadModel(viaApi);
  try {
    assert.deepEqual([m.quantization?.bits, m.quantization?.groupSize, m.config.numLayers], [4, 128, 4]);
    assert.deepEqual((await generate({ model: m, prompt: 'The cat', maxNewTokens: 6 })).outputIds, genJson.output_ids);
    assert.deepEqual(m.encode('The cat'), g.promptIds);
    assert.ok(m.weights.cfg === m.config, 'still open after generate');
  } finally {
    m.close();
  }

  // exportModel: the command's GGUF, byte for byte
  cli('export', '--model', viaApi, '--format', 'gguf', '--out', join(WORK, 'cli.gguf'));
  const rep = await exportModel({ model: viaApi, format: 'gguf', out: join(WORK, 'api.gguf') });
  assert.equal(rep.exact, true);
  assert.ok(readFileSync(join(WORK, 'cli.gguf')).equals(readFileSync(join(WORK, 'api.gguf'))), 'the GGUF files differ');
});

function trainOpts(out: string, over: Partial<BlockApOptions> = {}): BlockApOptions {
  return { model: TINY, calib: CALIB, out, wbits: 2, groupSize: 32, trainSize: 8, valSize: 2, seqlen: 64, batchSize: 2, epochs: 1, ...over };
}

test('an AbortSignal aborted mid-Block-AP leaves the .partial; the same call again finishes the same checkpoint', async () => {
  const ref = join(WORK, 'bap-ref');
  await blockAp(trainOpts(ref));
  const out = join(WORK, 'bap-abort');
  const ac = new AbortController();
  const stopAt = (e: EqatEvent): void => {
    if (e.type === 'block-step' && e.block === 1 && e.step === 2) ac.abort();
  };
  const err = await blockAp(trainOpts(out, { signal: ac.signal, onEvent: stopAt })).then(
    () => assert.fail('the aborted run resolved'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof AbortedError, String(err));
  assert.equal(err.name, 'AbortError');
  assert.match(err.message, /^aborted; kept block 1 finished in .*bap-abort\.partial\/; rerunning the same command resumes$/);
  assert.equal(err.kept, err.message.slice('aborted; '.length));
  assert.ok(!existsSync(out) && !existsSync(out + '.lock') && existsSync(out + '.partial'), 'the .partial alone is left');
  assert.equal(JSON.parse(readFileSync(join(out + '.partial', 'state.json'), 'utf8')).finishedBlocks, 1);

  const events: EqatEvent[] = [];
  const r = await blockAp(trainOpts(out, { onEvent: (e) => events.push(e) }));
  assert.equal(r.resumedFrom, 1);
  assert.deepEqual(events[0], { type: 'phase', phase: 'block-ap', out, resumedFrom: 1, reused: false });
  assert.deepEqual(events.filter((e) => e.type === 'block-start').map((e) => e.type === 'block-start' && e.block), [1, 2, 3]);
  const steps = events.filter((e) => e.type === 'block-step' && e.block === 1);
  assert.deepEqual(steps.map((e) => e.type === 'block-step' && `${e.step}/${e.of}`), ['1/4', '2/4', '3/4', '4/4']);
  assertSameFiles(ref, out, 'resumed after abort');
  assert.ok(!existsSync(out + '.partial'));

  // a signal aborted before the call: nothing is written
  const early = join(WORK, 'bap-early');
  await assert.rejects(blockAp(trainOpts(early, { signal: AbortSignal.abort() })), (e: Error) => e.name === 'AbortError' && /nothing was written/.test(e.message));
  assert.ok(!existsSync(early) && !existsSync(early + '.partial') && !existsSync(early + '.lock'));
});

test('an AbortSignal aborted mid-E2E-QP keeps the last saved state; the same call again finishes the same checkpoint', async () => {
  const bap = join(WORK, 'bap-ref');
  if (!existsSync(bap)) await blockAp(trainOpts(bap));
  const e2e = (out: string, over: object = {}) => e2eQp({ model: bap, data: CALIB, out, trainSize: 8, seqlen: 64, batchSize: 2, epochs: 1, saveEvery: 1, ...over });
  const ref = join(WORK, 'e2e-ref');
  await e2e(ref);
  const out = join(WORK, 'e2e-abort');
  const ac = new AbortController();
  const err = await e2e(out, { signal: ac.signal, onEvent: (e: EqatEvent) => e.type === 'e2e-save' && e.step === 2 && ac.abort() }).then(
    () => assert.fail('the aborted run resolved'),
    (e: unknown) => e,
  );
  assert.ok(err instanceof AbortedError, String(err));
  assert.match(err.message, /^aborted; kept the E2E-QP state after step 2 of 4 in .*e2e-abort\.partial\/; rerunning the same command resumes$/);
  const events: EqatEvent[] = [];
  const r = await e2e(out, { onEvent: (e: EqatEvent) => events.push(e) });
  assert.equal(r.resumedFrom, 2);
  assert.deepEqual(events.filter((e) => e.type === 'e2e-step').map((e) => e.type === 'e2e-step' && e.step), [3, 4]);
  const a = checkpointFiles(ref);
  const b = checkpointFiles(out);
  a.delete('eqat-recipe.json'); // it records the seconds
  b.delete('eqat-recipe.json');
  assert.deepEqual([...b.keys()], [...a.keys()]);
  for (const [f, bytes] of a) assert.ok(bytes.equals(b.get(f)!), `${f} differs`);
});

test('quantize passes the AbortSignal to both phases: aborted in E2E-QP, the same call again reuses Block-AP and resumes', async () => {
  const out = join(WORK, 'q-abort');
  const settings = {
    model: TINY, calib: CALIB, out, wbits: 2, groupSize: 32, saveEvery: 1,
    blockAp: { trainSize: 8, valSize: 2, seqlen: 64, batchSize: 2, epochs: 1 },
    e2eQp: { trainSize: 8, seqlen: 64, batchSize: 2, epochs: 1 },
  };
  // aborted at the first Block-AP step: nothing finished
  const first = new AbortController();
  await assert.rejects(
    quantize({ ...settings, signal: first.signal, onEvent: (e) => e.type === 'block-step' && first.abort() }),
    (e: Error) => e instanceof AbortedError && /^aborted; nothing was kept; rerunning the same command starts over$/.test(e.message),
  );
  assert.ok(!existsSync(out) && !existsSync(out + '.block-ap') && !existsSync(out + '.lock') && !existsSync(out + '.block-ap.lock'));
  // aborted after E2E-QP saved step 2
  const ac = new AbortController();
  await assert.rejects(
    quantize({ ...settings, signal: ac.signal, onEvent: (e) => e.type === 'e2e-save' && e.step === 2 && ac.abort() }),
    (e: Error) => e instanceof AbortedError && /^aborted; kept the Block-AP checkpoint in .*q-abort\.block-ap\/; the E2E-QP state after step 2 of 4 in .*q-abort\.partial\/; rerunning the same command resumes$/.test(e.message),
  );
  const events: EqatEvent[] = [];
  const r = await quantize({ ...settings, onEvent: (e) => events.push(e) });
  assert.equal(r.e2eQpResumedFrom, 2);
  assert.deepEqual(events.filter((e) => e.type === 'phase'), [
    { type: 'phase', phase: 'block-ap', out: out + '.block-ap', resumedFrom: 0, reused: true },
    { type: 'phase', phase: 'e2e-qp', out, resumedFrom: 2, reused: false },
  ]);
  assert.deepEqual(events.filter((e) => e.type === 'e2e-step').map((e) => e.type === 'e2e-step' && e.step), [3, 4]);
  assert.ok(existsSync(join(out, 'recipe.json')) && !existsSync(out + '.partial'));
});

test('a listener that throws stops the run with its error, keeping the finished blocks and releasing the output', async () => {
  const out = join(WORK, 'listener-throws');
  const boom = new Error('listener failed');
  const onEvent = (e: EqatEvent): void => {
    if (e.type === 'block-done' && e.block === 1) throw boom;
  };
  await assert.rejects(blockAp({ model: TINY, out, wbits: 4, epochs: 0, onEvent }), (e: unknown) => e === boom);
  assert.ok(!existsSync(out) && !existsSync(out + '.lock'));
  assert.equal(JSON.parse(readFileSync(join(out + '.partial', 'state.json'), 'utf8')).finishedBlocks, 2);
  const r = await blockAp({ model: TINY, out, wbits: 4, epochs: 0 });
  assert.equal(r.resumedFrom, 2);
  assertSameFiles(join(WORK, 'rtn-api'), out, 'resumed after the listener failed');
});

test('bad options are refused naming the setting, before anything is written', async () => {
  const out = join(WORK, 'refused');
  await assert.rejects(blockAp(trainOpts(out, { trainSize: 0 })), (e: Error) => e instanceof UsageError && /^--train-size: must be >= 1, got 0/.test(e.message));
  await assert.rejects(blockAp(trainOpts(out, { threads: 0 })), (e: Error) => e instanceof UsageError && /--threads must be an integer >= 1, got 0/.test(e.message));
  await assert.rejects(blockAp(trainOpts(out, { precision: 'bf16' })), /--precision: bf16 needs --device cuda/);
  await assert.rejects(blockAp(trainOpts(out, { model: join(WORK, 'nope') })), /--model .*nope: does not exist/);
  await assert.rejects(quantize({ model: TINY, out, wbits: 2 }), (e: Error) => e instanceof RecipeError && /^recipe: calib: missing/.test(e.message));
  await assert.rejects(quantize({ model: TINY, calib: CALIB, out, wbits: 2, recipe: join(WORK, 'none.yaml') }), /none\.yaml/);
  await assert.rejects(evaluate({ model: TINY, data: join(WORK, 'none.txt') }), /--data .*none\.txt: does not exist/);
  await assert.rejects(evaluate({ model: TINY }), (e: Error) => e instanceof UsageError && /give data \(perplexity\) or tasks/.test(e.message));
  await assert.rejects(evaluate({ model: TINY, tasks: ['piqa'], taskData: TASKS, limit: 1, batch: 0 }), /--batch must be an integer >= 1, got 0/);
  await assert.rejects(evaluate({ model: TINY, tasks: ['piqaa'] }), (e: Error) => e instanceof UsageError && /--tasks: no task "piqaa"; did you mean piqa/.test(e.message));
  await assert.rejects(evaluate({ model: TINY, data: EVAL, limit: 2 }), /--limit goes with --tasks/);
  await assert.rejects(exportModel({ model: TINY, format: 'xyz' as 'gguf', out: join(WORK, 'x.gguf') }), (e: Error) => e instanceof UsageError && /--format must be one of gguf, onnx/.test(e.message));
  await assert.rejects(loadModel(join(WORK, 'nope')), /--model .*nope: does not exist; pass a model directory/);
  assert.ok(!existsSync(out) && !existsSync(out + '.partial') && !existsSync(out + '.lock'));
});

test('examples/quantize.mjs runs: quantize, evaluate, generate and export through `eqat`', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-example-'));
  const out = join(dir, 'tiny');
  const r = spawnSync(process.execPath, [join(REPO, 'examples', 'quantize.mjs'), out], { cwd: dir, encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /E2E-QP step 4\/4: loss/);
  const ppl = [...r.stdout.matchAll(/perplexity of .*: (\d+\.\d+)/g)].map((x) => Number(x[1]));
  assert.equal(ppl.length, 2);
  assert.ok(ppl.every((p) => Number.isFinite(p) && p > 1), r.stdout);
  assert.match(r.stdout, /wrote .*tiny\.gguf \(\d+ bytes, exact: true\)/);
  assert.ok(existsSync(join(out, 'quantize_config.json')) && existsSync(join(out, 'recipe.json')));
  rmSync(dir, { recursive: true });
});

test.after(() => rmSync(WORK, { recursive: true, force: true }));
