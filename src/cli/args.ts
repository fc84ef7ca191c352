// Flag parsing for `eqat` subcommands: each command declares its flags once (type, default,
// help); parsing validates types and ranges and `--help` prints every flag with its default.
// The flags of recipe settings (block-ap, e2e-qp, quantize) are generated from the recipe schema
// (src/pipeline/recipe.ts), which also checks their values (`check`); the specs written here by
// hand are the flags that are no recipe setting (--threads, --device, --json ...).
import { parseArgs } from 'node:util';

export type FlagType = 'string' | 'int' | 'number' | 'boolean';

export interface FlagSpec {
  type: FlagType;
  help: string;
  default?: string | number | boolean;
  required?: boolean;
  /** Shown in --help instead of "default: <default>" where the default is not one value, e.g. "preset: 64 for 2-bit, 128 otherwise". */
  defaultNote?: string;
  /** For numbers: inclusive minimum. */
  min?: number;
  /** Allowed string values. */
  choices?: readonly string[];
  /** The problem with a value of the right type (out of range, empty ...), or null; the message follows "--<flag> ". */
  check?: (value: string | number) => string | null;
}

export type FlagSpecs = Record<string, FlagSpec>;

/** A usage error: a mistyped command or flag, a flag's value, a missing required flag (exit 2). */
export class UsageError extends Error {}

/** Edit distance counting an adjacent transposition as one edit (optimal string alignment). */
function editDistance(a: string, b: string): number {
  const d: number[][] = Array.from({ length: a.length + 1 }, (_, i) => [i, ...new Array<number>(b.length).fill(0)]);
  for (let j = 1; j <= b.length; j++) d[0]![j] = j;
  for (let i = 1; i <= a.length; i++) {
    for (let j = 1; j <= b.length; j++) {
      const cost = a[i - 1] === b[j - 1] ? 0 : 1;
      let v = Math.min(d[i - 1]![j]! + 1, d[i]![j - 1]! + 1, d[i - 1]![j - 1]! + cost);
      if (i > 1 && j > 1 && a[i - 1] === b[j - 2] && a[i - 2] === b[j - 1]) v = Math.min(v, d[i - 2]![j - 2]! + 1);
      d[i]![j] = v;
    }
  }
  return d[a.length]![b.length]!;
}

/**
 * The candidate a mistyped name most likely meant, or null: the closest within a third of its
 * length in edits (at least 2), else the one it abbreviates or extends (`--group` for
 * --group-size, `evaluate` for eval).
 */
export function didYouMean(input: string, candidates: readonly string[]): string | null {
  const x = input.toLowerCase();
  let best: string | null = null;
  let bestD = Math.max(2, Math.floor(x.length / 3)) + 1;
  for (const c of candidates) {
    const d = editDistance(x, c.toLowerCase());
    if (d < bestD) [best, bestD] = [c, d];
  }
  if (best !== null) return best;
  const prefixed = candidates.filter((c) => x.length >= 2 && (c.startsWith(x) || (c.length >= 3 && x.startsWith(c))));
  return prefixed.length === 1 ? prefixed[0]! : null;
}

/** "; did you mean X?" or nothing. */
function suggestion(input: string, candidates: readonly string[], prefix = ''): string {
  const s = didYouMean(input, candidates);
  return s === null ? '' : `; did you mean ${prefix}${s}?`;
}

/** True when argv asks for help (-h or --help before any `--`). */
export function wantsHelp(argv: readonly string[]): boolean {
  for (const a of argv) {
    if (a === '--') return false;
    if (a === '-h' || a === '--help') return true;
  }
  return false;
}

export type ParsedFlags = Record<string, string | number | boolean | undefined>;

/** A value as --help shows it: small numbers in exponent form (1e-4, not 0.0001). */
export function formatFlagValue(v: string | number | boolean): string {
  return typeof v === 'number' && v !== 0 && Math.abs(v) < 1e-3 ? v.toExponential() : String(v);
}

export function usage(command: string, summary: string, specs: FlagSpecs): string {
  const lines = [`usage: eqat ${command} [flags]`, '', summary, '', 'flags:'];
  const width = Math.max(...Object.keys(specs).map((k) => k.length + 2 + (specs[k]!.type === 'boolean' ? 0 : 6)));
  for (const [name, s] of Object.entries(specs)) {
    const flag = `--${name}` + (s.type === 'boolean' ? '' : ` <${s.type === 'string' ? 'str' : s.type}>`);
    let def = '';
    if (s.required) def = ' (required)';
    else if (s.defaultNote !== undefined) def = ` (${s.defaultNote})`;
    else if (s.default !== undefined) def = ` (default: ${formatFlagValue(s.default)})`;
    const choices = s.choices ? ` [${s.choices.join('|')}]` : '';
    lines.push(`  ${flag.padEnd(width + 4)} ${s.help}${choices}${def}`);
  }
  lines.push(`  ${'-h, --help'.padEnd(width + 4)} show this help`);
  return lines.join('\n');
}

/**
 * Parses and checks a command's flags. -h / --help anywhere returns { help: true } (before any
 * other check, so `eqat quantize --wbits 9 -h` still shows the help).
 */
export function parseFlags(command: string, argv: string[], specs: FlagSpecs): ParsedFlags & { help?: boolean } {
  if (wantsHelp(argv)) return { help: true };
  const options: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const [name, s] of Object.entries(specs)) options[name] = { type: s.type === 'boolean' ? 'boolean' : 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options, allowPositionals: false, strict: true }) as {
      values: Record<string, string | boolean | undefined>;
    });
  } catch (e) {
    throw new UsageError(`eqat ${command}: ${parseArgsProblem(e as Error & { code?: string }, argv, Object.keys(specs), command)}`);
  }
  const out: ParsedFlags = {};
  for (const [name, s] of Object.entries(specs)) {
    const raw = values[name];
    if (raw === undefined) {
      if (s.required) throw new UsageError(`eqat ${command}: missing required flag --${name} (eqat ${command} --help lists the flags)`);
      out[name] = s.default;
      continue;
    }
    if (s.type === 'boolean') {
      out[name] = raw as boolean;
      continue;
    }
    const str = raw as string;
    let value: string | number;
    if (s.type === 'string') {
      if (s.choices && !s.choices.includes(str)) {
        throw new UsageError(`eqat ${command}: --${name} must be one of ${s.choices.join(', ')}, got '${str}'`);
      }
      value = str;
    } else {
      value = Number(str);
      if (str.trim() === '' || !Number.isFinite(value) || (s.type === 'int' && !Number.isInteger(value))) {
        throw new UsageError(`eqat ${command}: --${name} must be ${s.type === 'int' ? 'an integer' : 'a number'}, got '${str}'`);
      }
      if (s.min !== undefined && value < s.min) {
        throw new UsageError(`eqat ${command}: --${name} must be >= ${s.min}, got ${value}`);
      }
    }
    const problem = s.check?.(value);
    if (problem) throw new UsageError(`eqat ${command}: --${name} ${problem}`);
    out[name] = value;
  }
  return out;
}

/** node:util parseArgs' complaint in eqat's words, with a suggestion for a mistyped flag. */
function parseArgsProblem(e: Error & { code?: string }, argv: readonly string[], names: readonly string[], command: string): string {
  const help = `eqat ${command} --help lists the flags`;
  if (e.code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION') {
    // "Unknown option '--grup-size'. To specify ..." / "Unknown option '-x'. ..."
    const flag = /'([^']+)'/.exec(e.message)?.[1] ?? '?';
    const bare = flag.replace(/^-+/, '').replace(/=.*$/, '');
    return `unknown flag '${flag}'${suggestion(bare, names, '--')} (${help})`;
  }
  if (e.code === 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL') {
    const arg = /'([^']*)'/.exec(e.message)?.[1] ?? '?';
    const at = argv.indexOf(arg);
    const after = at > 0 && argv[at - 1]!.startsWith('--') && argv[at - 1] !== '--' ? ` (--${argv[at - 1]!.slice(2).replace(/=.*$/, '')} takes no value)` : '';
    return `unexpected argument '${arg}'${after}: flags are --name value (${help})`;
  }
  if (e.code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
    const flag = /'(--?[^' ]+)/.exec(e.message)?.[1];
    if (flag && /argument missing/.test(e.message)) return `${flag} needs a value`;
    if (flag && /does not take an argument/.test(e.message)) return `${flag} is a switch and takes no value`;
    if (flag && /ambiguous/.test(e.message)) return `${flag} needs a value (one starting with '-' is written ${flag}=-value)`;
  }
  return e.message;
}
