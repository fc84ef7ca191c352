// The progress of a run as typed events, one stream for every consumer: the library's
// `onEvent` callback (src/index.ts) and the progress bars and log lines the CLI prints on stderr
// (progressPrinter, src/cli/progress.ts), which is only one consumer of the same events.
//
// Block and step numbers are counts a program reads: `block` is the 0-based index of the decoder
// block (as in block-ap-log.jsonl), `of` the number of blocks; `step` counts finished optimizer
// steps (1-based: step k of `of`). Events arrive synchronously from the run's own loop, in
// order; a listener that throws stops the run with its error (what was finished is kept, as
// for any failure).

/** The phases of eqat's runs. */
export type Phase = 'block-ap' | 'e2e-qp' | 'eval';

export type EqatEvent =
  /**
   * A phase starts writing `out` (null for eval). `resumedFrom`: blocks (Block-AP) or optimizer
   * steps (E2E-QP) an interrupted run had finished, 0 when it starts from scratch; `reused`: an
   * earlier Block-AP checkpoint of the same recipe and inputs is reused (quantize), nothing runs.
   */
  | { type: 'phase'; phase: Phase; out: string | null; resumedFrom: number; reused: boolean }
  /** Block-AP begins block `block` (0-based) of `of`; `steps`: its training steps (0 for round-to-nearest). */
  | { type: 'block-start'; block: number; of: number; steps: number }
  /** A Block-AP training step of `block` finished: `step` of `of` steps of this block, with its loss (MSE). */
  | { type: 'block-step'; block: number; step: number; of: number; loss: number }
  /**
   * A line of block-ap-log.jsonl: epoch 0 is the min-max init before training (and the only
   * line of a round-to-nearest block); losses are null where there is none (no validation windows).
   */
  | { type: 'epoch'; block: number; of: number; epoch: number; trainLoss: number | null; valLoss: number | null; seconds: number }
  /** Block `block` is frozen and its shard written (kept by an interruption from now on). */
  | { type: 'block-done'; block: number; of: number; seconds: number }
  /** E2E-QP training starts at optimizer step `step` (the steps restored from a saved state) of `of`. */
  | { type: 'e2e-start'; step: number; of: number }
  /** An E2E-QP optimizer step finished: `step` of `of`, its loss, learning rate and gradient norm before clipping. */
  | { type: 'e2e-step'; step: number; of: number; loss: number; lr: number; gradNorm: number; seconds: number }
  /** The E2E-QP training state after `step` was saved to `path` (an interruption resumes from here). */
  | { type: 'e2e-save'; step: number; of: number; path: string }
  /** Perplexity evaluation: `done` of `of` forward steps finished. */
  | { type: 'eval-step'; done: number; of: number }
  /** A phase finished: its output `out` (null for eval) is complete, after `seconds`. */
  | { type: 'done'; phase: Phase; out: string | null; seconds: number };

export type EqatEventType = EqatEvent['type'];

/** A consumer of a run's events. */
export type OnEvent = (event: EqatEvent) => void;

/** How a run reports: the CLI's progress on stderr unless quiet, and the caller's listener. */
export interface Reporting {
  /** No progress on stderr. */
  quiet?: boolean;
  /** Called with every event of the run, in order. */
  onEvent?: OnEvent;
}
