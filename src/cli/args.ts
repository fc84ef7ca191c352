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

export class UsageError extends Error {}

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
  lines.push(`  ${'--help'.padEnd(width + 4)} show this help`);
  return lines.join('\n');
}

export function parseFlags(command: string, argv: string[], specs: FlagSpecs): ParsedFlags & { help?: boolean } {
  const options: Record<string, { type: 'string' | 'boolean' }> = { help: { type: 'boolean' } };
  for (const [name, s] of Object.entries(specs)) options[name] = { type: s.type === 'boolean' ? 'boolean' : 'string' };
  let values: Record<string, string | boolean | undefined>;
  try {
    ({ values } = parseArgs({ args: argv, options, allowPositionals: false, strict: true }) as {
      values: Record<string, string | boolean | undefined>;
    });
  } catch (e) {
    throw new UsageError(`eqat ${command}: ${(e as Error).message}`);
  }
  if (values['help']) return { help: true };
  const out: ParsedFlags = {};
  for (const [name, s] of Object.entries(specs)) {
    const raw = values[name];
    if (raw === undefined) {
      if (s.required) throw new UsageError(`eqat ${command}: missing required flag --${name}`);
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
