// report.html: the run report of an eqat output (block-ap, e2e-qp, quantize), one self-contained
// HTML file a person opens to look at a run: per-block Block-AP train/val loss by epoch against
// round-to-nearest (the epoch-0 val loss of each block, before training), E2E-QP loss and
// learning rate by step, the evaluation of the output (eqat-eval.json, when `quantize --eval-*`
// wrote one; before and after quantization side by side when it holds the full-precision
// model's figures too), the recipe, timings and peak memory. Charts are inline SVG polylines with axes and
// labels; there is no script, no stylesheet or image file and no network reference, so the file
// reads the same offline, mailed or archived. renderReport is a pure function of the output's
// files (their text); writeReport reads them from a directory and writes <dir>/report.html.
// A log line that is not a well-formed record is skipped with a note at the top of the report
// (a finished run is never failed by its report).
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';

/** The files of an output the report is made from, as text; null when absent. */
export interface ReportFiles {
  /** What the report is of (the output directory, shown as its title). */
  dir: string;
  recipe: string | null; // eqat-recipe.json
  blockApLog: string | null; // block-ap-log.jsonl
  e2eQpLog: string | null; // e2e-qp-log.jsonl
  eval: string | null; // eqat-eval.json
}

export const REPORT_FILE = 'report.html';

/** The files the report reads, by ReportFiles key. */
const FILES = { recipe: 'eqat-recipe.json', blockApLog: 'block-ap-log.jsonl', e2eQpLog: 'e2e-qp-log.jsonl', eval: 'eqat-eval.json' } as const;

/** Reads the report's inputs from an output directory (absent files are null). */
export function readReportFiles(dir: string): ReportFiles {
  const read = (f: string): string | null => (existsSync(join(dir, f)) ? readFileSync(join(dir, f), 'utf8') : null);
  return { dir, recipe: read(FILES.recipe), blockApLog: read(FILES.blockApLog), e2eQpLog: read(FILES.e2eQpLog), eval: read(FILES.eval) };
}

/**
 * Writes <dir>/report.html (through a temporary file and a rename); returns the report's notes
 * (skipped lines ...). `shownAs`: the directory's name in the report (the final output's, when
 * the report is written into its `.partial` before the rename that publishes it).
 */
export function writeReport(dir: string, shownAs = dir): string[] {
  const files = { ...readReportFiles(dir), dir: shownAs };
  if (files.recipe === null && files.blockApLog === null && files.e2eQpLog === null) {
    throw new Error(`${dir}: no ${FILES.recipe}, ${FILES.blockApLog} or ${FILES.e2eQpLog}: not the output of eqat block-ap, e2e-qp or quantize`);
  }
  const { html, notes } = buildReport(files);
  const path = join(dir, REPORT_FILE);
  writeFileSync(path + '.tmp', html);
  renameSync(path + '.tmp', path);
  return notes;
}

/** Peak resident memory of this process so far, bytes (what eqat-recipe.json records at the end of each phase). */
export function peakRssBytes(): number {
  return process.resourceUsage().maxRSS * 1024; // maxRSS is in KiB
}

/** The report of an output's files as one HTML document. */
export function renderReport(files: ReportFiles): string {
  return buildReport(files).html;
}

// ---------------------------------------------------------------------------------------------
// reading the records

/** One line of block-ap-log.jsonl (src/pipeline/block-ap.ts BlockLog); block is 0-based there. */
export interface BlockLogLine {
  block: number;
  epoch: number;
  trainLoss: number | null;
  valLoss: number | null;
  seconds: number;
}

/** One line of e2e-qp-log.jsonl (src/pipeline/e2e-qp.ts E2eQpStepLog); step is 1-based. */
export interface E2eLogLine {
  step: number;
  loss: number;
  lr: number;
  gradNorm: number;
  seconds: number;
}

type Json = Record<string, unknown>;
const isObj = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);
const isNum = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const numOrNull = (v: unknown): v is number | null => v === null || isNum(v);

/**
 * The well-formed records of a JSONL log; every other non-empty line becomes a note naming the
 * file, the line number and what is wrong with it.
 */
function parseLog<T>(text: string, file: string, check: (v: Json) => string | null, notes: string[]): T[] {
  const out: T[] = [];
  const lines = text.split('\n');
  lines.forEach((line, i) => {
    if (line.trim() === '') return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      notes.push(`${file} line ${i + 1}: not JSON (${(e as Error).message}); skipped`);
      return;
    }
    const problem = isObj(v) ? check(v) : 'not a JSON object';
    if (problem) notes.push(`${file} line ${i + 1}: ${problem}; skipped`);
    else out.push(v as T);
  });
  return out;
}

function checkBlockLine(v: Json): string | null {
  if (!Number.isInteger(v['block']) || (v['block'] as number) < 0) return 'block is not a block index';
  if (!Number.isInteger(v['epoch']) || (v['epoch'] as number) < 0) return 'epoch is not an epoch number';
  if (!numOrNull(v['trainLoss'])) return 'trainLoss is not a number or null';
  if (!numOrNull(v['valLoss'])) return 'valLoss is not a number or null';
  if (!isNum(v['seconds'])) return 'seconds is not a number';
  return null;
}

function checkE2eLine(v: Json): string | null {
  if (!Number.isInteger(v['step']) || (v['step'] as number) < 1) return 'step is not a step number';
  for (const k of ['loss', 'lr', 'gradNorm', 'seconds']) if (!isNum(v[k])) return `${k} is not a number`;
  return null;
}

function parseJsonFile(text: string | null, file: string, notes: string[]): Json | null {
  if (text === null) return null;
  try {
    const v = JSON.parse(text) as unknown;
    if (isObj(v)) return v;
    notes.push(`${file}: not a JSON object; not shown`);
  } catch (e) {
    notes.push(`${file}: not JSON (${(e as Error).message}); not shown`);
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// formatting

/** Text for HTML (element content and attribute values alike). */
export function escapeHtml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

/** A number as the report's tables show it: 4 significant digits, exponent form when tiny or huge. */
export function fmt(x: number | null | undefined): string {
  if (x === null || x === undefined || !Number.isFinite(x)) return '–';
  if (x === 0) return '0';
  const a = Math.abs(x);
  if (a < 1e-3 || a >= 1e6) return x.toExponential(3);
  return Number(x.toPrecision(4)).toString();
}

/** A tick label: as short as the value allows (2e-5, 0.05, 1200). */
const fmtTick = (t: number): string => (t !== 0 && (Math.abs(t) < 1e-3 || Math.abs(t) >= 1e6) ? Number(t.toPrecision(3)).toExponential() : String(Number(t.toPrecision(6))));

const fmtSeconds = (s: number): string => (s >= 120 ? `${(s / 60).toFixed(1)} min` : `${s.toFixed(s < 10 ? 2 : 1)} s`);
const fmtBytes = (b: number): string => `${(b / 2 ** 20).toFixed(0)} MiB`;

// ---------------------------------------------------------------------------------------------
// charts

interface Series {
  name: string;
  /** CSS class: the colour (see STYLE). */
  cls: string;
  points: [number, number][];
  dashed?: boolean;
  /** A marker per point (with its value as a tooltip); off for long series. */
  markers?: boolean;
}

interface ChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** Logarithmic y axis (all values must be > 0; falls back to linear otherwise). */
  logY?: boolean;
  width?: number;
  height?: number;
  /** x values are integers (epochs, steps, blocks): ticks at integers only. */
  integerX?: boolean;
}

/** [min, max] of a (possibly long) list of numbers; no spread, so a log of any length fits. */
function extent(v: number[]): [number, number] {
  let lo = Infinity;
  let hi = -Infinity;
  for (const x of v) [lo, hi] = [Math.min(lo, x), Math.max(hi, x)];
  return [lo, hi];
}

/** About `count` round tick values covering [lo, hi]. */
function niceTicks(lo: number, hi: number, count: number, integer = false): number[] {
  if (hi <= lo) return [lo];
  const raw = (hi - lo) / count;
  const mag = 10 ** Math.floor(Math.log10(raw));
  let step = [1, 2, 5, 10].map((m) => m * mag).find((s) => s >= raw) ?? 10 * mag;
  if (integer) step = Math.max(1, Math.round(step));
  const ticks: number[] = [];
  for (let t = Math.ceil(lo / step - 1e-9) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
}

/** Tick values of a log axis over [lo, hi] (lo > 0): decades, with 2 and 5 when few decades, else linear ticks. */
function logTicks(lo: number, hi: number): number[] {
  const decades = Math.log10(hi / lo);
  if (decades < 1) return niceTicks(lo, hi, 4);
  const mult = decades <= 3 ? [1, 2, 5] : [1];
  const ticks: number[] = [];
  for (let e = Math.floor(Math.log10(lo)); e <= Math.ceil(Math.log10(hi)); e++) {
    for (const m of mult) {
      const t = Number((m * 10 ** e).toPrecision(12));
      if (t >= lo * (1 - 1e-9) && t <= hi * (1 + 1e-9)) ticks.push(t);
    }
  }
  return ticks;
}

/** An SVG line chart: axes with ticks and labels, one polyline per series, a legend. */
function lineChart(c: ChartSpec): string {
  const W = c.width ?? 640;
  const H = c.height ?? 300;
  const m = { left: 70, right: 16, top: 28, bottom: 64 };
  const pw = W - m.left - m.right;
  const ph = H - m.top - m.bottom;
  const all = c.series.flatMap((s) => s.points);
  const parts: string[] = [];
  parts.push(`<svg class="chart" width="${W}" height="${H}" viewBox="0 0 ${W} ${H}" role="img" aria-label="${escapeHtml(c.title)}">`);
  parts.push(`<title>${escapeHtml(c.title)}</title>`);
  parts.push(`<text class="ctitle" x="${W / 2}" y="18" text-anchor="middle">${escapeHtml(c.title)}</text>`);
  if (all.length === 0) {
    parts.push(`<text class="empty" x="${W / 2}" y="${H / 2}" text-anchor="middle">no data</text></svg>`);
    return parts.join('');
  }
  let [x0, x1] = extent(all.map((p) => p[0]));
  let [y0, y1] = extent(all.map((p) => p[1]));
  const logY = (c.logY ?? false) && y0 > 0;
  if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
  if (y0 === y1) [y0, y1] = y0 === 0 ? [-1, 1] : [y0 - Math.abs(y0) * 0.1, y1 + Math.abs(y1) * 0.1];
  if (logY) {
    // a little room above and below, in log space
    const pad = Math.max(Math.log10(y1 / y0) * 0.05, 0.01);
    [y0, y1] = [y0 / 10 ** pad, y1 * 10 ** pad];
  } else {
    const pad = (y1 - y0) * 0.05;
    [y0, y1] = [y0 - pad, y1 + pad];
  }
  const X = (x: number): number => m.left + ((x - x0) / (x1 - x0)) * pw;
  const Y = (y: number): number => (logY ? m.top + ph - (Math.log10(y / y0) / Math.log10(y1 / y0)) * ph : m.top + ph - ((y - y0) / (y1 - y0)) * ph);
  const r = (v: number): string => v.toFixed(1);
  // grid, ticks and tick labels
  for (const t of logY ? logTicks(y0, y1) : niceTicks(y0, y1, 5)) {
    parts.push(`<line class="grid" x1="${m.left}" x2="${m.left + pw}" y1="${r(Y(t))}" y2="${r(Y(t))}"/>`);
    parts.push(`<text class="tick" x="${m.left - 6}" y="${r(Y(t) + 4)}" text-anchor="end">${escapeHtml(fmtTick(t))}</text>`);
  }
  for (const t of niceTicks(x0, x1, Math.min(8, Math.max(1, Math.round(x1 - x0))), c.integerX)) {
    if (t < x0 || t > x1) continue;
    parts.push(`<line class="xtick" x1="${r(X(t))}" x2="${r(X(t))}" y1="${m.top + ph}" y2="${m.top + ph + 5}"/>`);
    parts.push(`<text class="tick" x="${r(X(t))}" y="${m.top + ph + 18}" text-anchor="middle">${escapeHtml(fmtTick(t))}</text>`);
  }
  parts.push(`<line class="axis" x1="${m.left}" x2="${m.left}" y1="${m.top}" y2="${m.top + ph}"/>`);
  parts.push(`<line class="axis" x1="${m.left}" x2="${m.left + pw}" y1="${m.top + ph}" y2="${m.top + ph}"/>`);
  parts.push(`<text class="label" x="${m.left + pw / 2}" y="${m.top + ph + 36}" text-anchor="middle">${escapeHtml(c.xLabel)}</text>`);
  const yl = `${c.yLabel}${logY ? ' (log scale)' : ''}`;
  parts.push(`<text class="label" transform="translate(16 ${m.top + ph / 2}) rotate(-90)" text-anchor="middle">${escapeHtml(yl)}</text>`);
  // the series: a polyline each (one point per record), markers with the value as tooltip
  for (const s of c.series) {
    if (s.points.length === 0) continue;
    const pts = s.points.map(([x, y]) => `${r(X(x))},${r(Y(y))}`).join(' ');
    parts.push(`<polyline class="series ${s.cls}${s.dashed ? ' dashed' : ''}" data-series="${escapeHtml(s.name)}" data-n="${s.points.length}" points="${pts}"/>`);
    if (s.markers ?? s.points.length <= 60) {
      for (const [x, y] of s.points) {
        parts.push(`<circle class="pt ${s.cls}" cx="${r(X(x))}" cy="${r(Y(y))}" r="2.5"><title>${escapeHtml(`${s.name} at ${fmt(x)}: ${fmt(y)}`)}</title></circle>`);
      }
    }
  }
  // legend, under the x label
  let lx = m.left;
  for (const s of c.series) {
    if (s.points.length === 0) continue;
    const ly = H - 10;
    parts.push(`<line class="series ${s.cls}${s.dashed ? ' dashed' : ''}" x1="${lx}" x2="${lx + 22}" y1="${ly - 4}" y2="${ly - 4}"/>`);
    parts.push(`<text class="legend" x="${lx + 27}" y="${ly}">${escapeHtml(s.name)}</text>`);
    lx += 40 + s.name.length * 7;
  }
  parts.push('</svg>');
  return parts.join('');
}

// ---------------------------------------------------------------------------------------------
// the sections

const table = (head: string[], rows: string[][], cls = ''): string =>
  `<table${cls ? ` class="${cls}"` : ''}><thead><tr>${head.map((h) => `<th>${escapeHtml(h)}</th>`).join('')}</tr></thead><tbody>` +
  rows.map((row) => `<tr>${row.map((c) => `<td>${escapeHtml(c)}</td>`).join('')}</tr>`).join('') +
  '</tbody></table>';

/** Block-AP's time as logged: the sum over blocks of each block's last logged seconds (since the block started). */
function blockApSeconds(lines: BlockLogLine[]): number {
  const last = new Map<number, number>();
  for (const l of lines) last.set(l.block, Math.max(last.get(l.block) ?? 0, l.seconds));
  return [...last.values()].reduce((a, b) => a + b, 0);
}

/** Block-AP: a summary (RTN vs trained val loss per block, log scale), a table and a chart per block. */
function blockApSection(lines: BlockLogLine[]): string {
  const byBlock = new Map<number, BlockLogLine[]>();
  for (const l of lines) byBlock.set(l.block, [...(byBlock.get(l.block) ?? []), l]);
  const blocks = [...byBlock.keys()].sort((a, b) => a - b);
  const trained = lines.some((l) => l.trainLoss !== null || l.valLoss !== null);
  const rows: string[][] = [];
  const rtn: [number, number][] = [];
  const final: [number, number][] = [];
  const finalTrain: [number, number][] = [];
  const seconds = blockApSeconds(lines);
  for (const b of blocks) {
    const ls = byBlock.get(b)!.sort((x, y) => x.epoch - y.epoch);
    const init = ls.find((l) => l.epoch === 0)?.valLoss ?? null;
    const last = ls[ls.length - 1]!;
    const lastVal = last.epoch > 0 ? last.valLoss : null;
    const lastTrain = last.trainLoss;
    const s = Math.max(...ls.map((l) => l.seconds));
    if (init !== null) rtn.push([b + 1, init]);
    if (lastVal !== null) final.push([b + 1, lastVal]);
    if (lastTrain !== null) finalTrain.push([b + 1, lastTrain]);
    const change = init !== null && lastVal !== null && init > 0 ? `${(((lastVal - init) / init) * 100).toFixed(1)}%` : '–';
    rows.push([String(b + 1), fmt(init), fmt(lastTrain), fmt(lastVal), change, String(Math.max(...ls.map((l) => l.epoch))), fmtSeconds(s)]);
  }
  const parts = [`<section id="block-ap"><h2>Block-AP</h2>`];
  parts.push(`<p>${blocks.length} blocks, ${fmtSeconds(seconds)} in all (the sum of the blocks' logged times). ` +
    (trained
      ? 'Each block trains its weights and quantization parameters to reproduce the full-precision block; the loss is the mean squared error of the block output. Round-to-nearest (RTN) is the val loss of the min-max initialisation, before training (epoch 0).</p>'
      : 'No training (epochs 0): the checkpoint is round-to-nearest with min-max quantization parameters, and no losses were logged.</p>'));
  if (trained) {
    parts.push('<div class="charts">');
    parts.push(lineChart({
      title: 'Val loss per block: RTN vs after Block-AP',
      xLabel: 'block',
      yLabel: 'loss (MSE)',
      logY: true,
      integerX: true,
      series: [
        { name: 'RTN (epoch 0)', cls: 's-rtn', points: rtn, dashed: true },
        { name: 'val, last epoch', cls: 's-val', points: final },
        { name: 'train, last epoch', cls: 's-train', points: finalTrain },
      ],
    }));
    parts.push('</div>');
  }
  parts.push(table(['block', 'RTN val loss', 'train loss', 'val loss', 'val vs RTN', 'epochs', 'time'], rows, 'num'));
  if (trained) {
    parts.push('<h3>Loss by epoch, per block</h3><div class="charts small">');
    for (const b of blocks) {
      const ls = byBlock.get(b)!;
      const init = ls.find((l) => l.epoch === 0)?.valLoss ?? null;
      const maxEpoch = Math.max(...ls.map((l) => l.epoch));
      parts.push(lineChart({
        title: `block ${b + 1}`,
        xLabel: 'epoch',
        yLabel: 'loss',
        width: 320,
        height: 230,
        integerX: true,
        series: [
          { name: 'RTN', cls: 's-rtn', points: init !== null ? [[0, init], [maxEpoch, init]] : [], dashed: true, markers: false },
          { name: 'val', cls: 's-val', points: ls.filter((l) => l.valLoss !== null).map((l) => [l.epoch, l.valLoss!]) },
          { name: 'train', cls: 's-train', points: ls.filter((l) => l.trainLoss !== null).map((l) => [l.epoch, l.trainLoss!]) },
        ],
      }));
    }
    parts.push('</div>');
  }
  parts.push('</section>');
  return parts.join('\n');
}

/** E2E-QP: loss and learning rate by step, and a summary. */
function e2eSection(lines: E2eLogLine[], rec: Json | null): string {
  const sorted = [...lines].sort((a, b) => a.step - b.step);
  const losses = sorted.map((l) => l.loss);
  const [lo, hi] = extent(losses);
  const lossRange = losses.length ? hi / lo : 1;
  const stepSeconds = sorted.reduce((s, l) => s + l.seconds, 0);
  const e = rec && isObj(rec['e2e_qp']) ? rec['e2e_qp'] : null;
  const parts = [`<section id="e2e-qp"><h2>E2E-QP</h2>`];
  parts.push('<p>The step sizes of the quantized model train end to end on next-token cross-entropy, everything else frozen.</p>');
  parts.push('<div class="charts">');
  parts.push(lineChart({
    title: 'E2E-QP training loss by step',
    xLabel: 'step',
    yLabel: 'loss (nats/token)',
    logY: lossRange > 10,
    integerX: true,
    series: [{ name: 'loss', cls: 's-loss', points: sorted.map((l) => [l.step, l.loss]) }],
  }));
  parts.push(lineChart({
    title: 'E2E-QP learning rate by step',
    xLabel: 'step',
    yLabel: 'learning rate',
    integerX: true,
    series: [{ name: 'lr', cls: 's-lr', points: sorted.map((l) => [l.step, l.lr]) }],
  }));
  parts.push('</div>');
  const first = sorted[0];
  const last = sorted[sorted.length - 1];
  parts.push(table(['steps', 'first loss', 'last loss', 'mean grad norm', 'step time (mean)', 'training time'], [[
    String(sorted.length),
    fmt(first?.loss),
    fmt(last?.loss),
    fmt(sorted.length ? sorted.reduce((s, l) => s + l.gradNorm, 0) / sorted.length : null),
    sorted.length ? fmtSeconds(stepSeconds / sorted.length) : '–',
    isNum(e?.['seconds']) ? fmtSeconds(e['seconds']) : fmtSeconds(stepSeconds),
  ]], 'num'));
  parts.push('</section>');
  return parts.join('\n');
}

/** A fraction as a percentage with two decimals; '–' for what is no number. */
const pct = (v: unknown): string => (isNum(v) ? `${(v * 100).toFixed(2)}%` : '–');

/** The change from `before` to `after` as a signed number and, when asked, the relative change: "+1.23 (+10.0%)". */
function change(before: unknown, after: unknown, relative: boolean): string {
  if (!isNum(before) || !isNum(after)) return '–';
  const d = after - before;
  const sign = d > 0 ? '+' : d < 0 ? '−' : '';
  const rel = relative && before !== 0 ? ` (${sign}${Math.abs((d / before) * 100).toFixed(1)}%)` : '';
  return `${sign}${fmt(Math.abs(d))}${rel}`;
}

/** The change of an accuracy in percentage points: "−1.20 pp". */
function changePp(before: unknown, after: unknown): string {
  if (!isNum(before) || !isNum(after)) return '–';
  const d = (after - before) * 100;
  return `${d > 0 ? '+' : d < 0 ? '−' : ''}${Math.abs(d).toFixed(2)} pp`;
}

/** The entries of eqat-eval.json's perplexity object (or its baseline's) that are objects. */
const pplEntries = (figures: Json | null): [string, Json][] =>
  Object.entries(figures && isObj(figures['perplexity']) ? figures['perplexity'] : {}).filter((e): e is [string, Json] => isObj(e[1]));

/** The task objects of a zero-shot result, by task name. */
function taskMap(figures: Json | null): Map<string, Json> {
  const zs = figures && isObj(figures['zeroShot']) ? figures['zeroShot'] : null;
  const tasks = zs && Array.isArray(zs['tasks']) ? (zs['tasks'] as unknown[]).filter(isObj) : [];
  return new Map(tasks.map((t) => [String(t['task']), t]));
}

/**
 * eqat-eval.json (src/pipeline/quantize.ts QuantizeEval): perplexity per dataset, zero-shot
 * accuracy per task; with its `baseline` (the full-precision model on the same windows and
 * tasks), both side by side with the change.
 */
function evalSection(ev: Json): string {
  const base = isObj(ev['baseline']) ? ev['baseline'] : null;
  const parts = [`<section id="eval"><h2>${base ? 'Evaluation: full precision and quantized' : 'Evaluation of the quantized model'}</h2>`];
  const zs = isObj(ev['zeroShot']) ? ev['zeroShot'] : null;
  const pm = (v: unknown, s: unknown): string => (isNum(s) ? `${pct(v)} ± ${(s * 100).toFixed(2)}` : pct(v));
  if (base) {
    const fpPpl = new Map(pplEntries(base));
    const rows = pplEntries(ev).map(([data, p]) => {
      const fp = fpPpl.get(data) ?? null;
      return [data, fmt(fp?.['ppl'] as number), fmt(p['ppl'] as number), change(fp?.['ppl'], p['ppl'], true), `${String(p['windows'])} × ${String(p['seqlen'])}`];
    });
    if (rows.length) parts.push('<h3>Perplexity</h3>' + table(['data', 'full precision', 'quantized', 'change', 'windows × tokens'], rows, 'num before-after'));
    if (zs && Array.isArray(zs['tasks'])) {
      const fpTasks = taskMap(base);
      const fpZs = isObj(base['zeroShot']) ? base['zeroShot'] : null;
      const zrows = [...taskMap(ev)].map(([task, t]) => {
        const fp = fpTasks.get(task) ?? null;
        return [task, pct(fp?.['acc']), pct(t['acc']), changePp(fp?.['acc'], t['acc']), pct(fp?.['accNorm']), pct(t['accNorm']), changePp(fp?.['accNorm'], t['accNorm']), `${String(t['docs'])} of ${String(t['rows'])}`];
      });
      zrows.push(['average', pct(fpZs?.['averageAcc']), pct(zs['averageAcc']), changePp(fpZs?.['averageAcc'], zs['averageAcc']), '', '', '', '']);
      parts.push('<h3>Zero-shot accuracy</h3>' +
        table(['task', 'acc, full precision', 'acc, quantized', 'change', 'acc_norm, full precision', 'acc_norm, quantized', 'change', 'docs'], zrows, 'num before-after'));
    }
    parts.push(`<p class="muted">Full precision: ${escapeHtml(String(base['model'] ?? '?'))}, evaluated on the same windows and tasks with the same settings.</p>`);
    parts.push('</section>');
    return parts.join('\n');
  }
  const rows = pplEntries(ev).map(([data, p]) => [data, fmt(p['ppl'] as number), fmt(p['nll'] as number), `${String(p['windows'])} × ${String(p['seqlen'])}`, fmtSeconds(Number(p['seconds']) || 0)]);
  if (rows.length) parts.push('<h3>Perplexity</h3>' + table(['data', 'perplexity', 'nll (nats)', 'windows × tokens', 'time'], rows, 'num'));
  if (zs && Array.isArray(zs['tasks'])) {
    const zrows = [...taskMap(ev).values()].map((t) => [String(t['task']), pm(t['acc'], t['accStderr']), pm(t['accNorm'], t['accNormStderr']), `${String(t['docs'])} of ${String(t['rows'])}`]);
    zrows.push(['average', pct(zs['averageAcc']), '', '']);
    parts.push('<h3>Zero-shot accuracy</h3>' + table(['task', 'acc', 'acc_norm', 'docs'], zrows, 'num'));
  }
  parts.push(typeof ev['baselineError'] === 'string'
    ? `<p class="notes">The evaluation of the full-precision model failed: ${escapeHtml(ev['baselineError'])}</p>`
    : '<p class="muted">The full-precision model was not evaluated by this run (eval.baseline off); eqat eval --model on it gives the figures to compare.</p>');
  parts.push('</section>');
  return parts.join('\n');
}

/** The phase records of eqat-recipe.json, newest first: the record itself and its `previous` chain. */
function phaseRecords(rec: Json): Json[] {
  const out: Json[] = [];
  for (let r: unknown = rec; isObj(r) && out.length < 8; r = r['previous']) out.push(r);
  return out;
}

/** Recipe, timings and peak memory from eqat-recipe.json; the whole record under a disclosure. */
function recipeSection(rec: Json, evalSeconds: number | null, blockApSeconds: number | null, baselineSeconds: number | null = null): string {
  const rows: string[][] = [];
  const show = (v: unknown): string => (typeof v === 'string' ? v : JSON.stringify(v));
  for (const r of phaseRecords(rec).reverse()) {
    const phase = String(r['phase'] ?? '?');
    const settings = phase === 'e2e-qp' && isObj(r['e2e_qp']) ? r['e2e_qp'] : r;
    const recipe = isObj(settings['recipe']) ? settings['recipe'] : {};
    const keys = Object.keys(recipe).map((k) => `${k} ${show(recipe[k])}`).join(', ');
    rows.push([phase, `${show(settings['device'] ?? '?')} / ${show(settings['precision'] ?? '?')}`, keys]);
  }
  const timing: string[][] = [];
  for (const r of phaseRecords(rec).reverse()) {
    const phase = String(r['phase'] ?? '?');
    const s = phase === 'e2e-qp' && isObj(r['e2e_qp']) ? r['e2e_qp'] : r;
    const peak = isNum(s['peak_rss_bytes']) ? fmtBytes(s['peak_rss_bytes']) : 'not recorded';
    const t = isNum(s['seconds']) ? fmtSeconds(s['seconds']) : phase === 'block-ap' && blockApSeconds !== null ? `${fmtSeconds(blockApSeconds)} (its blocks)` : '–';
    timing.push([phase, t, peak]);
  }
  if (evalSeconds !== null) timing.push(['evaluation', fmtSeconds(evalSeconds), '']);
  if (baselineSeconds !== null) timing.push(['evaluation of the full-precision model', fmtSeconds(baselineSeconds), '']);
  const version = isObj(rec['eqat']) ? Object.entries(rec['eqat']).map(([k, v]) => `${k} ${show(v)}`).join(', ') : '';
  return [
    `<section id="recipe"><h2>Recipe, timings and memory</h2>`,
    version ? `<p>Made by ${escapeHtml(version)}.</p>` : '',
    table(['phase', 'device / precision', 'settings'], rows, 'recipe'),
    '<h3>Timings and peak memory</h3>',
    table(['phase', 'time', 'peak RSS of the process at its end'], timing, 'num'),
    `<details><summary>eqat-recipe.json</summary><pre>${escapeHtml(JSON.stringify(rec, null, 2))}</pre></details>`,
    '</section>',
  ].join('\n');
}

const STYLE = `
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;background:#fff;margin:24px auto;max-width:1100px;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:18px;margin:28px 0 8px;border-bottom:1px solid #d8dde6;padding-bottom:4px}h3{font-size:15px;margin:18px 0 6px}
.muted{color:#5c6675}.notes{background:#fff4e0;border:1px solid #e6b35c;padding:8px 12px;border-radius:4px}
table{border-collapse:collapse;margin:8px 0}th,td{padding:3px 10px;border-bottom:1px solid #e4e8ee;text-align:left;vertical-align:top}
table.num td{font-variant-numeric:tabular-nums}td:first-child{white-space:nowrap}table.recipe td:last-child{font-family:ui-monospace,monospace;font-size:12px;word-break:break-all}
pre{background:#f5f7fa;padding:8px;overflow:auto;font-size:12px}
.charts{display:flex;flex-wrap:wrap;gap:12px}.chart{background:#fcfcfd;border:1px solid #e4e8ee}
.chart text{font-size:11px;fill:#333}.chart .ctitle{font-size:13px;font-weight:600}.chart .label{font-size:12px}.chart .empty{fill:#888}
.chart .axis{stroke:#444;stroke-width:1}.chart .grid{stroke:#e6e9ee;stroke-width:1}.chart .xtick{stroke:#444}
.series{fill:none;stroke-width:2}.dashed{stroke-dasharray:5 4}
.s-rtn{stroke:#c0392b;fill:#c0392b}.s-val{stroke:#1f6fd1;fill:#1f6fd1}.s-train{stroke:#2e9d5b;fill:#2e9d5b}.s-loss{stroke:#7b3fb5;fill:#7b3fb5}.s-lr{stroke:#d98a00;fill:#d98a00}
polyline.series,line.series{fill:none}
`;

function buildReport(f: ReportFiles): { html: string; notes: string[] } {
  const notes: string[] = [];
  const rec = parseJsonFile(f.recipe, FILES.recipe, notes);
  const ev = parseJsonFile(f.eval, FILES.eval, notes);
  const bap = f.blockApLog === null ? null : parseLog<BlockLogLine>(f.blockApLog, FILES.blockApLog, checkBlockLine, notes);
  const e2e = f.e2eQpLog === null ? null : parseLog<E2eLogLine>(f.e2eQpLog, FILES.e2eQpLog, checkE2eLine, notes);
  const phase = rec ? String(rec['phase'] ?? '') : '';
  const title = `eqat run report: ${basename(f.dir) || f.dir}`;
  const body: string[] = [];
  body.push(`<h1>${escapeHtml(title)}</h1>`);
  body.push(`<p class="muted">${escapeHtml(f.dir)}${phase ? ` · last phase: ${escapeHtml(phase)}` : ''}${rec?.['quantize_recipe'] ? ' · eqat quantize' : ''}</p>`);
  if (notes.length) body.push(`<div class="notes" id="notes"><strong>Notes</strong><ul>${notes.map((n) => `<li>${escapeHtml(n)}</li>`).join('')}</ul></div>`);
  if (bap) body.push(blockApSection(bap));
  if (e2e) body.push(e2eSection(e2e, rec));
  if (ev) body.push(evalSection(ev));
  const base = ev && isObj(ev['baseline']) ? ev['baseline'] : null;
  if (rec) body.push(recipeSection(rec, ev && isNum(ev['seconds']) ? ev['seconds'] : null, bap ? blockApSeconds(bap) : null, base && isNum(base['seconds']) ? base['seconds'] : null));
  const html = `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)}</title><style>${STYLE}</style></head>
<body>
${body.join('\n')}
</body></html>
`;
  return { html, notes };
}
