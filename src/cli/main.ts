#!/usr/bin/env node
// The `eqat` command: dispatches to subcommands. Each subcommand declares its flags in one
// table (src/cli/commands.ts) and prints them with defaults under -h / --help.
// Conventions (as git and npm): `eqat --version` / `-V`; `-h` / `--help` at the top and after
// every command (`eqat help <command>` too); a mistyped command or flag gets "did you mean";
// results go to stdout, usage errors, progress, logs and notes to stderr (help that was asked
// for goes to stdout); every error line starts with one "eqat:" or "eqat <command>:".
// Exit codes: 0 done; 2 a usage error (an unknown command or flag, a flag's or recipe setting's
// value, type or combination, a missing required flag: UsageError); 130 / 143 a run stopped by
// SIGINT / SIGTERM (InterruptedError, after one line saying what was kept); 1 anything else
// (inputs, data, the device, the file system).
import { didYouMean, parseFlags, usage, UsageError, wantsHelp } from './args.js';
import { InterruptedError } from '../io/output.js';
import { eqatVersion } from '../engine/version.js';

// the command table pulls in the whole pipeline: loaded after --version, which needs none of it
let COMMANDS: typeof import('./commands.js').COMMANDS;

/** The command being run, for error lines. */
let current: string | null = null;

function overview(): string {
  const lines = ['usage: eqat <command> [flags]', '       eqat --version | --help', '', 'commands:'];
  for (const [n, c] of Object.entries(COMMANDS)) lines.push(`  ${n.padEnd(10)} ${c.summary}`);
  lines.push('', 'eqat <command> --help lists the flags of a command.');
  return lines.join('\n');
}

function unknownCommand(name: string): UsageError {
  const s = didYouMean(name, Object.keys(COMMANDS));
  return new UsageError(`eqat: unknown command '${name}'${s ? `; did you mean '${s}'?` : ''} (eqat --help lists the commands)`);
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === '--version' || name === '-V') {
    process.stdout.write(`eqat ${eqatVersion().eqat}\n`);
    return 0;
  }
  ({ COMMANDS } = await import('./commands.js'));
  if (name === undefined) {
    process.stderr.write(overview() + '\n');
    return 2;
  }
  if (name === '-h' || name === '--help' || (name === 'help' && rest.length === 0)) {
    process.stdout.write(overview() + '\n');
    return 0;
  }
  if (name === 'help') {
    const cmd = COMMANDS[rest[0]!];
    if (!cmd) throw unknownCommand(rest[0]!);
    process.stdout.write(usage(rest[0]!, cmd.summary, cmd.flags) + '\n');
    return 0;
  }
  if (name.startsWith('-')) {
    const s = didYouMean(name.replace(/^-+/, ''), ['version', 'help']);
    throw new UsageError(`eqat: unknown flag '${name}'${s ? `; did you mean --${s}?` : ''}; a command comes first: eqat <command> [flags] (eqat --help lists the commands)`);
  }
  const cmd = COMMANDS[name];
  if (!cmd) throw unknownCommand(name);
  current = name;
  if (wantsHelp(rest)) {
    process.stdout.write(usage(name, cmd.summary, cmd.flags) + '\n');
    return 0;
  }
  await cmd.run(parseFlags(name, rest, cmd.flags));
  return 0;
}

/** One "eqat:" prefix: messages thrown with their own (the addon loader's) are not prefixed again. */
function errorLine(err: unknown): string {
  const message = (err instanceof Error ? err.message : String(err)).replace(/^(eqat: )+/, '');
  if (err instanceof UsageError) {
    if (/^eqat[ :]/.test(message)) return message; // "eqat <command>: ..." from the flag parser
    return current ? `eqat ${current}: ${message}` : `eqat: ${message}`;
  }
  return `eqat: ${message}`;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.stderr.write(errorLine(err) + '\n');
    if (err instanceof UsageError) {
      process.exitCode = 2;
    } else if (err instanceof InterruptedError) {
      process.exitCode = err.exitCode;
    } else {
      if (process.env['EQAT_DEBUG'] && err instanceof Error) console.error(err.stack);
      process.exitCode = 1;
    }
  },
);
