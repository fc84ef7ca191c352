// report.html (src/report/report.ts): written by block-ap and e2e-qp into their output, and
// again by `eqat report`. On a real tiny run (llama-tiny, a few seconds): one chart point per
// log record, the numbers shown are the logs', peak memory recorded per phase, no external
// reference of any kind; recipe strings escaped; a broken log line skipped with a note naming
// it; bad `eqat report` inputs refused naming the flag. The full tier opens the report in
// headless Chromium (Debian's `chromium`), reads back its DOM and a screenshot, and checks that
// the plots were laid out and painted.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { runBlockAp, blockApDefaults } from '../../src/pipeline/block-ap.js';
import { runE2eQp, e2eQpDefaults } from '../../src/pipeline/e2e-qp.js';
import { fmt, readReportFiles, renderReport, type BlockLogLine, type E2eLogLine } from '../../src/report/report.js';
import type { QuantizeEval } from '../../src/pipeline/quantize.js';
import { REPO, TINY } from '../golden.js';
import { fullTierOnly } from '../tier.js';

process.env['EQAT_CACHE_DIR'] = mkdtempSync(join(tmpdir(), 'eqat-cache-'));

const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const CLI = join(REPO, 'dist', 'src', 'cli', 'main.js');
const WORK = mkdtempSync(join(tmpdir(), 'eqat-report-'));
const BAP = join(WORK, 'bap');
const E2E = join(WORK, 'e2e');

/** The tiny run every test reads: Block-AP (2 epochs) then E2E-QP (8 steps). */
const run = (async () => {
  await runBlockAp({ ...blockApDefaults(2), model: TINY, calib: CALIB, out: BAP, wbits: 2, groupSize: 32, trainSize: 8, valSize: 2, seqlen: 32, batchSize: 2, epochs: 2, quiet: true });
  await runE2eQp({ ...e2eQpDefaults(2), model: BAP, data: CALIB, out: E2E, trainSize: 16, seqlen: 32, batchSize: 2, microBatchSize: 1, quiet: true });
})();

const jsonl = <T>(path: string): T[] =>
  readFileSync(path, 'utf8').split('\n').filter((l) => l !== '').map((l) => JSON.parse(l) as T);

/** The SVG of the chart titled `title` (its <svg ...>...</svg>). */
function chart(html: string, title: string): string {
  const at = html.indexOf(`<title>${title}</title>`);
  assert.ok(at >= 0, `a chart titled "${title}"`);
  const start = html.lastIndexOf('<svg', at);
  return html.slice(start, html.indexOf('</svg>', at) + 6);
}

/** The polyline of series `name` in a chart: its points as [x, y] pixel pairs. */
function points(svg: string, name: string): number[][] {
  const m = new RegExp(`<polyline [^>]*data-series="${name}" data-n="(\\d+)" points="([^"]*)"`).exec(svg);
  assert.ok(m, `a polyline of series ${name}`);
  const pts = m[2]!.split(' ').map((p) => p.split(',').map(Number));
  assert.equal(pts.length, Number(m[1]), 'data-n is the number of points');
  for (const p of pts) assert.ok(p.length === 2 && p.every(Number.isFinite), `point ${p.join(',')}`);
  return pts;
}

/** The tooltips of the point markers of a chart. */
const tooltips = (svg: string): string[] => [...svg.matchAll(/<circle [^>]*><title>([^<]*)<\/title>/g)].map((m) => m[1]!);

/** Anything that would make a browser reach outside the file. */
const EXTERNAL = /https?:|\/\/|\bsrc=|\bhref=|url\(|@import|<script|<link|<img|<iframe/i;

test('block-ap and e2e-qp write report.html: one chart point per log record, the numbers of the logs, peak memory per phase', async () => {
  await run;
  for (const dir of [BAP, E2E]) assert.ok(existsSync(join(dir, 'report.html')), `${dir}/report.html`);
  const html = readFileSync(join(E2E, 'report.html'), 'utf8');
  assert.doesNotMatch(html, EXTERNAL);
  // Block-AP: per block, a val point per record with a val loss (epoch 0 = RTN), a train point per trained epoch
  const bap = jsonl<BlockLogLine>(join(E2E, 'block-ap-log.jsonl'));
  const blocks = [...new Set(bap.map((l) => l.block))];
  assert.equal(blocks.length, 4);
  assert.equal(bap.length, 4 * 3, 'epoch 0 and 2 epochs per block');
  for (const b of blocks) {
    const lines = bap.filter((l) => l.block === b);
    const svg = chart(html, `block ${b + 1}`);
    assert.equal(points(svg, 'val').length, lines.filter((l) => l.valLoss !== null).length);
    assert.equal(points(svg, 'train').length, lines.filter((l) => l.trainLoss !== null).length);
    const tips = tooltips(svg);
    for (const l of lines) {
      if (l.valLoss !== null) assert.ok(tips.includes(`val at ${l.epoch}: ${fmt(l.valLoss)}`), `block ${b + 1} epoch ${l.epoch} val ${fmt(l.valLoss)} in ${tips.join(' | ')}`);
      if (l.trainLoss !== null) assert.ok(tips.includes(`train at ${l.epoch}: ${fmt(l.trainLoss)}`), `block ${b + 1} epoch ${l.epoch} train`);
    }
    // the table row: block, RTN (epoch-0 val), last train, last val
    const rtn = lines.find((l) => l.epoch === 0)!.valLoss;
    const last = lines.find((l) => l.epoch === 2)!;
    assert.ok(html.includes(`<tr><td>${b + 1}</td><td>${fmt(rtn)}</td><td>${fmt(last.trainLoss)}</td><td>${fmt(last.valLoss)}</td>`), `block ${b + 1} row`);
  }
  const summary = chart(html, 'Val loss per block: RTN vs after Block-AP');
  for (const s of ['RTN (epoch 0)', 'val, last epoch', 'train, last epoch']) assert.equal(points(summary, s.replace(/[()]/g, '\\$&')).length, 4, s);
  assert.match(summary, /\(log scale\)/);
  // E2E-QP: a loss and an lr point per step, at the logged values
  const e2e = jsonl<E2eLogLine>(join(E2E, 'e2e-qp-log.jsonl'));
  assert.equal(e2e.length, 8);
  const lossChart = chart(html, 'E2E-QP training loss by step');
  const lrChart = chart(html, 'E2E-QP learning rate by step');
  assert.equal(points(lossChart, 'loss').length, e2e.length);
  assert.equal(points(lrChart, 'lr').length, e2e.length);
  for (const l of e2e) {
    assert.ok(tooltips(lossChart).includes(`loss at ${l.step}: ${fmt(l.loss)}`), `step ${l.step} loss`);
    assert.ok(tooltips(lrChart).includes(`lr at ${l.step}: ${fmt(l.lr)}`), `step ${l.step} lr`);
  }
  // x grows with the step; a higher loss is drawn higher (smaller y)
  const lp = points(lossChart, 'loss');
  for (let i = 1; i < lp.length; i++) {
    assert.ok(lp[i]![0]! > lp[i - 1]![0]!);
    if (e2e[i]!.loss > e2e[i - 1]!.loss) assert.ok(lp[i]![1]! <= lp[i - 1]![1]!, `step ${i + 1} drawn above step ${i}`);
  }
  assert.ok(html.includes(`<td>${e2e.length}</td><td>${fmt(e2e[0]!.loss)}</td><td>${fmt(e2e[e2e.length - 1]!.loss)}</td>`), 'E2E-QP summary row');
  // peak memory: recorded at the end of each phase, shown in MiB
  const rec = JSON.parse(readFileSync(join(E2E, 'eqat-recipe.json'), 'utf8')) as { previous: { peak_rss_bytes: number }; e2e_qp: { peak_rss_bytes: number } };
  for (const [phase, bytes] of [['block-ap', rec.previous.peak_rss_bytes], ['e2e-qp', rec.e2e_qp.peak_rss_bytes]] as const) {
    assert.ok(Number.isInteger(bytes) && bytes > 2 ** 20, `${phase} peak RSS ${bytes}`);
    assert.ok(html.includes(`<tr><td>${phase}</td>`) && html.includes(`<td>${(bytes / 2 ** 20).toFixed(0)} MiB</td>`), `${phase} peak memory shown`);
  }
  // the report names the output, not its .partial it was written in
  assert.ok(html.includes(`<h1>eqat run report: e2e</h1>`));
  assert.ok(!html.includes('.partial'));
});

test('eqat report --model rewrites the report of an output as the run wrote it; refuses what is no eqat output', async () => {
  await run;
  const written = readFileSync(join(BAP, 'report.html'), 'utf8');
  rmSync(join(BAP, 'report.html'));
  const r = spawnSync(process.execPath, [CLI, 'report', '--model', BAP], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout.trim(), `wrote ${join(BAP, 'report.html')}`);
  assert.equal(readFileSync(join(BAP, 'report.html'), 'utf8'), written);
  const missing = spawnSync(process.execPath, [CLI, 'report', '--model', join(WORK, 'none')], { encoding: 'utf8' });
  assert.equal(missing.status, 1);
  assert.match(missing.stderr, /--model .*none: /);
  const empty = join(WORK, 'empty');
  mkdirSync(empty);
  const notOurs = spawnSync(process.execPath, [CLI, 'report', '--model', empty], { encoding: 'utf8' });
  assert.equal(notOurs.status, 1);
  assert.match(notOurs.stderr, /empty: no eqat-recipe\.json, block-ap-log\.jsonl or e2e-qp-log\.jsonl: not the output of eqat block-ap, e2e-qp or quantize/);
  assert.ok(!existsSync(join(empty, 'report.html')));
  const noFlag = spawnSync(process.execPath, [CLI, 'report'], { encoding: 'utf8' });
  assert.equal(noFlag.status, 2);
  assert.match(noFlag.stderr, /missing required flag --model/);
});

test('recipe strings and the directory name are escaped', async () => {
  await run;
  const files = readReportFiles(E2E);
  const rec = JSON.parse(files.recipe!) as { e2e_qp: { recipe: { data: string } } };
  const nasty = '/data/a<b&c"d\'e>/<script>x</script>.txt';
  rec.e2e_qp.recipe.data = nasty;
  const html = renderReport({ ...files, dir: '/runs/<i>&"run"', recipe: JSON.stringify(rec) });
  assert.ok(!html.includes('<script>') && !html.includes('a<b') && !html.includes('<i>'));
  assert.ok(html.includes('/data/a&lt;b&amp;c&quot;d&#39;e&gt;/&lt;script&gt;x&lt;/script&gt;.txt'), 'the path, escaped, in the recipe table');
  assert.ok(html.includes('&lt;i&gt;&amp;&quot;run&quot;'));
  assert.doesNotMatch(html, EXTERNAL);
});

test('a broken log line is skipped with a note naming the file and line; the rest is drawn', async () => {
  await run;
  const dir = join(WORK, 'broken');
  cpSync(E2E, dir, { recursive: true });
  const log = readFileSync(join(dir, 'e2e-qp-log.jsonl'), 'utf8').split('\n');
  const steps = log.filter((l) => l !== '').length;
  log.splice(2, 0, '{"step":3,"loss":5.1,"lr":'); // a line cut short (line 3)
  log.splice(5, 1, '{"step":5,"loss":"high","lr":0,"gradNorm":1,"seconds":0}'); // a wrong type (line 6, replacing step 5)
  writeFileSync(join(dir, 'e2e-qp-log.jsonl'), log.join('\n'));
  writeFileSync(join(dir, 'eqat-eval.json'), '{"perplexity": ');
  const r = spawnSync(process.execPath, [CLI, 'report', '--model', dir], { encoding: 'utf8' });
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stderr, /eqat report: e2e-qp-log\.jsonl line 3: not JSON \(.*\); skipped/);
  assert.match(r.stderr, /eqat report: e2e-qp-log\.jsonl line 6: loss is not a number; skipped/);
  assert.match(r.stderr, /eqat report: eqat-eval\.json: not JSON .*; not shown/);
  const html = readFileSync(join(dir, 'report.html'), 'utf8');
  assert.match(html, /<div class="notes" id="notes">.*e2e-qp-log\.jsonl line 3: not JSON.*e2e-qp-log\.jsonl line 6: loss is not a number; skipped/s);
  assert.equal(points(chart(html, 'E2E-QP training loss by step'), 'loss').length, steps - 1, 'every good line, step 5 left out');
  // a run's own report has no notes
  assert.ok(!readFileSync(join(E2E, 'report.html'), 'utf8').includes('id="notes"'));
});

test('the evaluation of eqat quantize (eqat-eval.json) is shown: perplexity per dataset, accuracy per task, beside the full-precision model\'s when there', async () => {
  await run;
  const ev: QuantizeEval = {
    model: E2E,
    perplexity: { wikitext2: { ppl: 12.3456, nll: 2.5133, tokens: 4096, predictions: 4094, windows: 2, seqlen: 2048, seconds: 3.5 } },
    zeroShot: {
      tasks: [
        { task: 'piqa', split: 'validation', docs: 50, rows: 1838, acc: 0.62, accStderr: 0.0693, accNorm: 0.6, accNormStderr: 0.07, files: [] },
        { task: 'winogrande', split: 'validation', docs: 50, rows: 1267, acc: 0.54, accStderr: 0.0712, accNorm: null, accNormStderr: null, files: [] },
      ],
      averageAcc: 0.58,
      requests: 200,
      sequences: 180,
      tokens: 9000,
      seconds: 4,
    },
    seconds: 7.5,
  };
  const html = renderReport({ ...readReportFiles(E2E), eval: JSON.stringify(ev) });
  assert.ok(html.includes('<tr><td>wikitext2</td><td>12.35</td><td>2.513</td><td>2 × 2048</td>'));
  assert.ok(html.includes('<tr><td>piqa</td><td>62.00% ± 6.93</td><td>60.00% ± 7.00</td><td>50 of 1838</td></tr>'));
  assert.ok(html.includes('<tr><td>winogrande</td><td>54.00% ± 7.12</td><td>–</td>'));
  assert.ok(html.includes('<tr><td>average</td><td>58.00%</td>'));
  assert.ok(html.includes('<tr><td>evaluation</td><td>7.50 s</td>'));
  assert.ok(html.includes('(eval.baseline off)'));

  // with the full-precision model's figures (eval.baseline): before and after, with the change
  const fp: QuantizeEval = {
    ...ev,
    model: TINY,
    perplexity: { wikitext2: { ...ev.perplexity['wikitext2']!, ppl: 10.5, nll: 2.3514 } },
    zeroShot: { ...ev.zeroShot!, tasks: [{ ...ev.zeroShot!.tasks[0]!, acc: 0.66, accNorm: 0.64 }, { ...ev.zeroShot!.tasks[1]!, acc: 0.54 }], averageAcc: 0.6 },
    seconds: 6.25,
  };
  const both = renderReport({ ...readReportFiles(E2E), eval: JSON.stringify({ ...ev, baseline: fp }) });
  assert.ok(both.includes('<h2>Evaluation: full precision and quantized</h2>'));
  assert.ok(both.includes('<tr><td>wikitext2</td><td>10.5</td><td>12.35</td><td>+1.846 (+17.6%)</td><td>2 × 2048</td></tr>'));
  assert.ok(both.includes('<tr><td>piqa</td><td>66.00%</td><td>62.00%</td><td>−4.00 pp</td><td>64.00%</td><td>60.00%</td><td>−4.00 pp</td><td>50 of 1838</td></tr>'));
  assert.ok(both.includes('<tr><td>winogrande</td><td>54.00%</td><td>54.00%</td><td>0.00 pp</td><td>–</td><td>–</td><td>–</td><td>50 of 1267</td></tr>'));
  assert.ok(both.includes('<tr><td>average</td><td>60.00%</td><td>58.00%</td><td>−2.00 pp</td>'));
  assert.ok(both.includes('<tr><td>evaluation of the full-precision model</td><td>6.25 s</td>'));
  assert.ok(!both.includes('(eval.baseline off)'));
  // a baseline that failed: today's table, and why
  const failed = renderReport({ ...readReportFiles(E2E), eval: JSON.stringify({ ...ev, baseline: null, baselineError: 'model <gone>' }) });
  assert.ok(failed.includes('<tr><td>wikitext2</td><td>12.35</td><td>2.513</td>'));
  assert.ok(failed.includes('The evaluation of the full-precision model failed: model &lt;gone&gt;'));
});

// ---------------------------------------------------------------------------------------------
// headless Chromium (full tier)

const CHROMIUM = ['chromium', 'chromium-browser', 'google-chrome'].find((c) => spawnSync(c, ['--version'], { encoding: 'utf8' }).status === 0);

/** Decodes an 8-bit RGB(A), non-interlaced PNG (what Chromium's --screenshot writes) to RGBA pixels. */
function decodePng(png: Buffer): { width: number; height: number; rgba: Uint8Array } {
  assert.ok(png.subarray(0, 8).equals(Buffer.from([137, 80, 78, 71, 13, 10, 26, 10])), 'a PNG');
  let at = 8;
  let width = 0, height = 0, type = 0;
  const idat: Buffer[] = [];
  while (at < png.length) {
    const len = png.readUInt32BE(at);
    const kind = png.toString('latin1', at + 4, at + 8);
    const data = png.subarray(at + 8, at + 8 + len);
    if (kind === 'IHDR') {
      [width, height, type] = [data.readUInt32BE(0), data.readUInt32BE(4), data[9]!];
      assert.equal(data[8], 8, 'bit depth 8');
      assert.equal(data[12], 0, 'not interlaced');
    }
    if (kind === 'IDAT') idat.push(data);
    at += 12 + len;
  }
  const ch = type === 6 ? 4 : type === 2 ? 3 : assert.fail(`PNG colour type ${type}`);
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * ch;
  const px = new Uint8Array(height * stride);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)]!;
    for (let x = 0; x < stride; x++) {
      const v = raw[y * (stride + 1) + 1 + x]!;
      const a = x >= ch ? px[y * stride + x - ch]! : 0;
      const b = y > 0 ? px[(y - 1) * stride + x]! : 0;
      const c = x >= ch && y > 0 ? px[(y - 1) * stride + x - ch]! : 0;
      const p = a + b - c;
      const pr = Math.abs(p - a) <= Math.abs(p - b) && Math.abs(p - a) <= Math.abs(p - c) ? a : Math.abs(p - b) <= Math.abs(p - c) ? b : c;
      px[y * stride + x] = (v + [0, a, b, (a + b) >> 1, pr][f]!) & 255;
    }
  }
  const rgba = new Uint8Array(width * height * 4);
  for (let i = 0; i < width * height; i++) {
    for (let k = 0; k < 3; k++) rgba[i * 4 + k] = px[i * ch + k]!;
    rgba[i * 4 + 3] = ch === 4 ? px[i * ch + 3]! : 255;
  }
  return { width, height, rgba };
}

test('headless Chromium renders the report: the DOM holds every chart, the screenshot shows the plotted series', { skip: fullTierOnly('headless Chromium') || (!CHROMIUM && 'no chromium on PATH (apt-get install chromium)') }, async () => {
  await run;
  const page = 'file://' + join(E2E, 'report.html');
  const flags = ['--headless', '--no-sandbox', '--disable-gpu', '--hide-scrollbars', '--no-first-run', `--user-data-dir=${join(WORK, 'chromium-profile')}`];
  const dom = spawnSync(CHROMIUM!, [...flags, '--dump-dom', page], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(dom.status, 0, dom.stderr);
  const html = readFileSync(join(E2E, 'report.html'), 'utf8');
  // the parsed document: as many svg and polyline elements as the file holds, none lost to bad markup
  const count = (s: string, tag: string): number => (s.match(new RegExp(`<${tag}[ >]`, 'g')) ?? []).length;
  assert.equal(count(dom.stdout, 'svg'), 7, 'the summary, 4 blocks, loss and lr');
  assert.equal(count(dom.stdout, 'svg'), count(html, 'svg'));
  assert.equal(count(dom.stdout, 'polyline'), count(html, 'polyline'));
  assert.ok(dom.stdout.includes('E2E-QP learning rate by step'));
  // the screenshot: the series colours (src/report/report.ts STYLE) are painted
  const shot = join(WORK, 'report.png');
  const r = spawnSync(CHROMIUM!, [...flags, '--window-size=1200,2600', `--screenshot=${shot}`, page], { encoding: 'utf8', timeout: 120_000 });
  assert.equal(r.status, 0, r.stderr);
  const { width, height, rgba } = decodePng(readFileSync(shot));
  assert.equal(width, 1200);
  const colours: Record<string, [number, number, number]> = { val: [0x1f, 0x6f, 0xd1], train: [0x2e, 0x9d, 0x5b], rtn: [0xc0, 0x39, 0x2b], loss: [0x7b, 0x3f, 0xb5], lr: [0xd9, 0x8a, 0x00] };
  for (const [name, [R, G, B]] of Object.entries(colours)) {
    let n = 0;
    for (let i = 0; i < width * height; i++) if (Math.abs(rgba[i * 4]! - R) + Math.abs(rgba[i * 4 + 1]! - G) + Math.abs(rgba[i * 4 + 2]! - B) < 24) n++;
    assert.ok(n > 100, `${name}: ${n} pixels of its colour`);
  }
});
