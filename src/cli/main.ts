#!/usr/bin/env node
// The `eqat` command: dispatches to subcommands. Each subcommand declares its flags in one
// table (src/cli/commands.ts) and prints them with defaults under --help.
// Exit codes: 0 done; 2 a usage error (an unknown command or flag, a flag's or recipe setting's
// value, type or combination, a missing required flag: UsageError); 130 / 143 a run stopped by
// SIGINT / SIGTERM (InterruptedError, after one line saying what was kept); 1 anything else
// (inputs, data, the device, the file system).
import { COMMANDS } from './commands.js';
import { parseFlags, usage, UsageError } from './args.js';
import { InterruptedError } from '../io/output.js';

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    const lines = ['usage: eqat <command> [flags]', '', 'commands:'];
    for (const [n, c] of Object.entries(COMMANDS)) lines.push(`  ${n.padEnd(10)} ${c.summary}`);
    lines.push('', 'eqat <command> --help lists the flags of a command.');
    console.log(lines.join('\n'));
    return name ? 0 : 2;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    console.error(`eqat: unknown command '${name}' (commands: ${Object.keys(COMMANDS).join(', ')})`);
    return 2;
  }
  const flags = parseFlags(name, rest, cmd.flags);
  if (flags.help) {
    console.log(usage(name, cmd.summary, cmd.flags));
    return 0;
  }
  await cmd.run(flags);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    if (err instanceof UsageError) {
      console.error(err.message.startsWith('eqat ') ? err.message : `eqat: ${err.message}`);
      process.exitCode = 2;
    } else if (err instanceof InterruptedError) {
      console.error(`eqat: ${err.message}`);
      process.exitCode = err.exitCode;
    } else {
      console.error(`eqat: ${err instanceof Error ? err.message : String(err)}`);
      if (process.env['EQAT_DEBUG'] && err instanceof Error) console.error(err.stack);
      process.exitCode = 1;
    }
  },
);
