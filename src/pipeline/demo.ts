// `eqat demo`: the whole method on the bundled llama-tiny in a few minutes on a small CPU:
// perplexity of the full-precision model, of round-to-nearest, of Block-AP and of
// Block-AP + E2E-QP, side by side. Progress goes to stderr; the result (a table, or JSON under
// --json) is printed by the command. It runs through the library (src/index.ts), as the other
// commands do.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { packageRoot } from '../engine/native.js';
import { blockAp, e2eQp, evaluate } from '../index.js';

export interface DemoOptions {
  wbits: number;
  groupSize: number;
  trainSize: number;
  seqlen: number;
  epochs: number;
  keep: string | null;
  quiet: boolean;
  /** Where Block-AP, E2E-QP and the evaluations run (default cpu). */
  device?: 'cpu' | 'cuda';
}

/** One row per model: its perplexity and the seconds it took (quantizing and evaluating). */
export interface DemoResult {
  rows: { model: string; ppl: number; seconds: number }[];
  /** The directory the checkpoints were kept in (--keep), or null. */
  kept: string | null;
}

/** The result as a markdown table (and where the checkpoints are). */
export function formatDemo(r: DemoResult): string {
  const lines = ['| model | perplexity | seconds |', '|---|---|---|'];
  for (const { model, ppl, seconds } of r.rows) lines.push(`| ${model} | ${ppl.toFixed(3)} | ${seconds.toFixed(1)} |`);
  if (r.kept) lines.push('', `checkpoints kept in ${r.kept}`);
  return lines.join('\n');
}

export async function runDemo(o: DemoOptions): Promise<DemoResult> {
  const root = packageRoot();
  const model = join(root, 'fixtures', 'llama-tiny');
  const calib = join(root, 'fixtures', 'text', 'calib-sample.txt');
  const evalText = join(root, 'fixtures', 'text', 'eval-sample.txt');
  const work = o.keep ?? mkdtempSync(join(tmpdir(), 'eqat-demo-'));
  const tag = `w${o.wbits}g${o.groupSize}`;
  const say = (s: string): void => void (o.quiet || process.stderr.write(s + '\n'));
  const device = o.device ?? 'cpu';
  const rows: [string, number, number][] = [];
  try {
    const ev = async (dir: string) => (await evaluate({ model: dir, data: evalText, seqlen: o.seqlen, device })).perplexity!.ppl;
    say(`eqat demo: llama-tiny, ${tag}, eval on ${evalText} at seqlen ${o.seqlen}`);
    let t = performance.now();
    rows.push(['fp16 (original)', await ev(model), (performance.now() - t) / 1000]);
    const base = { model, wbits: o.wbits, groupSize: o.groupSize, progress: !o.quiet, device };
    t = performance.now();
    say('round-to-nearest ...');
    const rtnDir = join(work, `llama-tiny-${tag}-rtn`);
    await blockAp({ ...base, calib: null, out: rtnDir, epochs: 0 });
    rows.push([`RTN ${tag}`, await ev(rtnDir), (performance.now() - t) / 1000]);
    t = performance.now();
    say(`Block-AP (${o.trainSize} windows x ${o.seqlen} tokens, ${o.epochs} epochs) ...`);
    const bapDir = join(work, `llama-tiny-${tag}-block-ap`);
    await blockAp({
      ...base,
      calib,
      out: bapDir,
      trainSize: o.trainSize,
      valSize: 8,
      seqlen: o.seqlen,
      epochs: o.epochs,
    });
    rows.push([`Block-AP ${tag}`, await ev(bapDir), (performance.now() - t) / 1000]);
    t = performance.now();
    say(`E2E-QP (${o.trainSize} windows x ${o.seqlen} tokens, batch 32, 1 epoch) ...`);
    const e2eDir = join(work, `llama-tiny-${tag}-e2e-qp`);
    await e2eQp({
      model: bapDir,
      data: calib,
      out: e2eDir,
      trainSize: o.trainSize,
      seqlen: o.seqlen,
      microBatchSize: 8,
      progress: !o.quiet,
      device,
    });
    rows.push([`Block-AP + E2E-QP ${tag}`, await ev(e2eDir), (performance.now() - t) / 1000]);
    return { rows: rows.map(([model, ppl, seconds]) => ({ model, ppl, seconds })), kept: o.keep ? work : null };
  } finally {
    if (!o.keep) rmSync(work, { recursive: true, force: true });
  }
}
