// Progress reporting on stderr: a bar with ETA on a terminal, a line every few seconds
// otherwise (logs, CI), nothing when quiet. Built on cli-progress.
import cliProgress from 'cli-progress';

export interface Progress {
  update(done: number, extra?: Record<string, string | number>): void;
  stop(): void;
}

const SILENT: Progress = { update() {}, stop() {} };

export function progress(label: string, total: number, { quiet = false }: { quiet?: boolean } = {}): Progress {
  if (quiet || total <= 0) return SILENT;
  if (process.stderr.isTTY) {
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
