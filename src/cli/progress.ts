// Progress reporting on stderr: a bar with ETA on a terminal, a line every few seconds
// otherwise (logs, CI), nothing when quiet. Built on cli-progress. The runs report through
// typed events (src/pipeline/events.ts); progressPrinter turns them into these bars and
// Block-AP's log lines, as one consumer beside the caller's own (`reporter`).
// The bar (redrawn in place with carriage returns and cursor codes) is drawn only when stderr is
// a terminal that can take it: not when stderr is a pipe or file, nor on TERM=dumb. eqat prints no
// colour anywhere, so NO_COLOR output is the same as any other. Block numbers a person reads are
// 1-based ("block 3/32"); the events and block-ap-log.jsonl keep the 0-based index of
// model.layers.<i>.
import cliProgress from 'cli-progress';
import type { EqatEvent, OnEvent, Reporting } from '../pipeline/events.js';

export interface Progress {
  update(done: number, extra?: Record<string, string | number>): void;
  stop(): void;
}

const SILENT: Progress = { update() {}, stop() {} };

/** Whether progress may be drawn as a bar redrawn in place: stderr is a terminal, and not a dumb one. */
export function stderrIsInteractive(): boolean {
  return process.stderr.isTTY === true && process.env['TERM'] !== 'dumb';
}

export function progress(label: string, total: number, { quiet = false }: { quiet?: boolean } = {}): Progress {
  if (quiet || total <= 0) return SILENT;
  if (stderrIsInteractive()) {
    const bar = new cliProgress.SingleBar(
      {
        format: `${label} [{bar}] {percentage}% {value}/{total} | ETA {eta_formatted} | {info}`,
        stream: process.stderr,
        hideCursor: true,
        clearOnComplete: false,
      },
      cliProgress.Presets.shades_classic,
    );
    bar.start(total, 0, { info: '' });
    return {
      update(done, extra) {
        bar.update(done, { info: extra ? formatExtra(extra) : '' });
      },
      stop() {
        bar.stop();
      },
    };
  }
  // Not a terminal: a plain line at most every 5 s, and at the end.
  const t0 = Date.now();
  let last = 0;
  return {
    update(done, extra) {
      const now = Date.now();
      if (now - last < 5000 && done < total) return;
      last = now;
      const el = (now - t0) / 1000;
      const eta = done > 0 ? (el / done) * (total - done) : 0;
      process.stderr.write(
        `${label} ${done}/${total} (${((100 * done) / total).toFixed(0)}%) elapsed ${el.toFixed(0)}s eta ${eta.toFixed(0)}s${extra ? ' ' + formatExtra(extra) : ''}\n`,
      );
    },
    stop() {},
  };
}

function formatExtra(extra: Record<string, string | number>): string {
  return Object.entries(extra)
    .map(([k, v]) => `${k} ${typeof v === 'number' ? (Number.isInteger(v) ? v : v.toPrecision(5)) : v}`)
    .join(' ');
}

/**
 * The CLI's progress as a consumer of a run's events: a bar per Block-AP block (with the loss),
 * a line per block and epoch (train and validation loss), a bar for E2E-QP (loss, lr) and one
 * for perplexity evaluation. One printer per run (it holds the bar in progress).
 */
export function progressPrinter(): OnEvent {
  let bar: Progress | null = null;
  let barOf = '';
  let blocks = 0; // the model's block count (block-start's `of`; block-step's `of` counts steps)
  const stop = (): void => {
    bar?.stop();
    bar = null;
  };
  const barFor = (key: string, label: string, total: number): Progress => {
    if (!bar || barOf !== key) {
      stop();
      bar = progress(label, total);
      barOf = key;
    }
    return bar;
  };
  const f = (v: number | null): string => (v === null ? '-' : v.toExponential(4));
  return (e: EqatEvent) => {
    switch (e.type) {
      case 'block-start':
        blocks = e.of;
        break;
      case 'block-step':
        barFor(`block ${e.block}`, `block ${e.block + 1}/${blocks} step`, e.of).update(e.step, { loss: e.loss });
        break;
      case 'epoch':
        if (barOf === `block ${e.block}`) stop();
        process.stderr.write(`block ${e.block + 1}/${e.of} epoch ${e.epoch}: train ${f(e.trainLoss)} val ${f(e.valLoss)} (${e.seconds.toFixed(1)} s)\n`);
        break;
      case 'e2e-start': {
        const b = barFor('e2e-qp', 'e2e-qp', e.of);
        if (e.step > 0) b.update(e.step);
        if (e.step >= e.of) stop();
        break;
      }
      case 'e2e-step':
        barFor('e2e-qp', 'e2e-qp', e.of).update(e.step, { loss: e.loss, lr: e.lr });
        if (e.step >= e.of) stop();
        break;
      case 'eval-step':
        barFor('eval', 'eval', e.of).update(e.done);
        if (e.done >= e.of) stop();
        break;
      case 'done':
        stop();
        break;
      default:
        break;
    }
  };
}

/** The events of a run go to the CLI's printer (unless quiet) and to the caller's listener. */
export function reporter({ quiet = false, onEvent }: Reporting): OnEvent {
  const print = quiet ? null : progressPrinter();
  return (e) => {
    print?.(e);
    onEvent?.(e);
  };
}
