// The `eqat` command's conventions, run as a user runs it (a child process): --version / -V;
// -h / --help at the top and on every command; "did you mean" for a mistyped command or flag;
// usage errors exit 2 with one "eqat <command>:" line on stderr and nothing on stdout; one
// "eqat:" prefix on a runtime error (exit 1); results on stdout, progress on stderr (plain lines
// when stderr is no terminal, a bar on a terminal but not on TERM=dumb, no colour ever);
// --quiet / --json / --device / --threads on every command that can take them; block numbers
// counted from 1 where a person reads them, 0-based in block-ap-log.jsonl.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { REPO, TINY } from '../golden.js';
import { COMMANDS } from '../../src/cli/commands.js';
import { didYouMean, parseFlags, usage, UsageError } from '../../src/cli/args.js';

const CLI = join(REPO, 'dist', 'src', 'cli', 'main.js');
const EVAL_TEXT = join(REPO, 'fixtures', 'text', 'eval-sample.txt');
const CALIB = join(REPO, 'fixtures', 'text', 'calib-sample.txt');
const VERSION = (JSON.parse(readFileSync(join(REPO, 'package.json'), 'utf8')) as { version: string }).version;

function eqat(args: string[], env: Record<string, string> = {}, cli = CLI): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: 'utf8', env: { ...process.env, ...env }, cwd: REPO });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** A usage error: exit 2, nothing on stdout, one line on stderr matching `line`. */
function usageError(args: string[], line: RegExp): void {
  const r = eqat(args);
  assert.equal(r.status, 2, `eqat ${args.join(' ')}: exit ${r.status}\n${r.stderr}`);
  assert.equal(r.stdout, '', `eqat ${args.join(' ')}: stdout`);
  assert.equal(r.stderr.split('\n').filter(Boolean).length, 1, `one line: ${r.stderr}`);
  assert.match(r.stderr.trim(), line);
  assert.doesNotMatch(r.stderr, /eqat:? [^\n]*eqat:/, 'one prefix');
}

test('--version and -V print the package version on stdout', () => {
  for (const flag of ['--version', '-V']) {
    const r = eqat([flag]);
    assert.equal(r.status, 0);
    assert.equal(r.stdout, `eqat ${VERSION}\n`);
    assert.equal(r.stderr, '');
  }
});

test('help: asked for (-h, --help, help <command>), on stdout with exit 0, listing every command or flag; without a command, on stderr with exit 2', () => {
  for (const args of [['-h']]) {
    const r = eqat(args);
    assert.equal(r.status, 0, args.join(' '));
    assert.equal(r.stderr, '');
    for (const name of Object.keys(COMMANDS)) assert.match(r.stdout, new RegExp(`^  ${name} +\\S`, 'm'), `${args.join(' ')} lists ${name}`);
  }
  const none = eqat([]);
  assert.equal(none.status, 2);
  assert.equal(none.stdout, '');
  assert.match(none.stderr, /^usage: eqat <command> \[flags\]/);

  // every command's help in the child for three forms of asking; the flags listed, for each command
  for (const [name, cmd] of Object.entries(COMMANDS)) {
    const forms = name === 'eval' ? [['help', name]] : name === 'quantize' ? [[name, '--wbits', '9', '--help']] : [];
    for (const args of forms) {
      const r = eqat(args);
      assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
      assert.equal(r.stderr, '', args.join(' '));
      assert.match(r.stdout, new RegExp(`^usage: eqat ${name} \\[flags\\]`), args.join(' '));
      for (const flag of Object.keys(cmd.flags)) assert.match(r.stdout, new RegExp(`^  --${flag}\\b`, 'm'), `${args.join(' ')} lists --${flag}`);
      assert.match(r.stdout, /^ {2}-h, --help +show this help$/m);
    }
    const help = usage(name, cmd.summary, cmd.flags);
    for (const flag of Object.keys(cmd.flags)) assert.match(help, new RegExp(`^  --${flag}\\b`, 'm'), `eqat ${name} --help lists --${flag}`);
  }
});

test('didYouMean: the closest name within a few edits, an abbreviation, or nothing', () => {
  const commands = Object.keys(COMMANDS);
  assert.equal(didYouMean('quantise', commands), 'quantize');
  assert.equal(didYouMean('blockap', commands), 'block-ap');
  assert.equal(didYouMean('genrate', commands), 'generate');
  assert.equal(didYouMean('exprot', commands), 'export'); // a transposition is one edit
  assert.equal(didYouMean('e2e', commands), 'e2e-qp');
  assert.equal(didYouMean('evaluate', commands), 'eval');
  assert.equal(didYouMean('train', commands), null);
  assert.equal(didYouMean('x', commands), null);
  const flags = Object.keys(COMMANDS['block-ap']!.flags);
  assert.equal(didYouMean('grup-size', flags), 'group-size');
  assert.equal(didYouMean('wbit', flags), 'wbits');
  assert.equal(didYouMean('qiuet', flags), 'quiet');
  assert.equal(didYouMean('zzzzzz', flags), null);
});

test('usage errors exit 2 with one "eqat <command>:" line on stderr, with a suggestion for a mistyped name', () => {
  usageError(['quantise'], /^eqat: unknown command 'quantise'; did you mean 'quantize'\? \(eqat --help lists the commands\)$/);
  usageError(['--verison'], /^eqat: unknown flag '--verison'; did you mean --version\?; a command comes first/);
  usageError(['block-ap', '--model', TINY, '--grup-size', '32'], /^eqat block-ap: unknown flag '--grup-size'; did you mean --group-size\? \(eqat block-ap --help lists the flags\)$/);
  // a UsageError thrown by a command's own check gets the command's prefix too
  usageError(['generate', '--model', TINY, '--prompt', 'a', '--precision', 'bf16'], /^eqat generate: --precision: bf16 needs --device cuda/);
});

test('parseFlags: node:util parseArgs complaints in eqat\'s words, naming the flag', () => {
  const specs = COMMANDS['eval']!.flags;
  const cases: [string[], RegExp][] = [
    [['--model', TINY, '--modle', 'x'], /^eqat eval: unknown flag '--modle'; did you mean --model\? \(eqat eval --help lists the flags\)$/],
    [['--zzzzzz'], /^eqat eval: unknown flag '--zzzzzz' \(eqat eval --help lists the flags\)$/],
    [['model-dir'], /^eqat eval: unexpected argument 'model-dir': flags are --name value/],
    [['--json', 'yes'], /^eqat eval: unexpected argument 'yes' \(--json takes no value\)/],
    [['--model'], /^eqat eval: --model needs a value$/],
    [['--quiet=1'], /^eqat eval: --quiet is a switch and takes no value$/],
    [['--model', '-x'], /^eqat eval: --model needs a value \(one starting with '-' is written --model=-value\)$/],
    [['--data', EVAL_TEXT], /^eqat eval: missing required flag --model \(eqat eval --help lists the flags\)$/],
    [['--model', TINY, '--seqlen', '1.5'], /^eqat eval: --seqlen must be an integer, got '1\.5'$/],
  ];
  for (const [args, message] of cases) {
    assert.throws(() => parseFlags('eval', args, specs), (e: Error) => e instanceof UsageError && message.test(e.message), args.join(' '));
  }
  assert.deepEqual(parseFlags('eval', ['--seqlen', 'x', '-h'], specs), { help: true }, '-h wins over a bad value');
  assert.deepEqual(parseFlags('eval', ['--bogus', '--help'], specs), { help: true }, '--help wins over an unknown flag');
  assert.throws(() => parseFlags('eval', ['--', '-h'], specs), /eqat eval: unexpected argument '-h': flags are/, '-h after -- is no help');
});

test('a runtime error exits 1 with one "eqat:" prefix, also for a message that carries its own (the addon loader\'s); a package without build/ loads its prebuilt addon', () => {
  // a package tree without build/: the addon loader throws "eqat: native addon not found ..."
  const dir = mkdtempSync(join(tmpdir(), 'eqat-no-addon-'));
  try {
    cpSync(join(REPO, 'package.json'), join(dir, 'package.json'));
    cpSync(join(REPO, 'binding.gyp'), join(dir, 'binding.gyp'));
    mkdirSync(join(dir, 'dist'));
    cpSync(join(REPO, 'dist', 'src'), join(dir, 'dist', 'src'), { recursive: true });
    symlinkSync(join(REPO, 'node_modules'), join(dir, 'node_modules'));
    const n = eqat(['eval', '--model', TINY, '--data', EVAL_TEXT, '--threads', '1'], {}, join(dir, 'dist', 'src', 'cli', 'main.js'));
    assert.equal(n.status, 1, n.stderr);
    assert.match(n.stderr, /^eqat: native addon not found at \S+ \(nor a prebuilt one at \S+prebuilds\/linux-x64\/eqat\.node\)/);
    assert.doesNotMatch(n.stderr, /eqat: eqat:/);
    // an installed package without build/ loads the prebuilt addon it carries
    mkdirSync(join(dir, 'prebuilds', `${process.platform}-${process.arch}`), { recursive: true });
    cpSync(join(REPO, 'build', 'Release', 'eqat.node'), join(dir, 'prebuilds', `${process.platform}-${process.arch}`, 'eqat.node'));
    const p = eqat(['generate', '--model', TINY, '--prompt', 'a', '--max-new-tokens', '1', '--threads', '1', '--json'], {}, join(dir, 'dist', 'src', 'cli', 'main.js'));
    assert.equal(p.status, 0, p.stderr);
    assert.equal((JSON.parse(p.stdout) as { output_ids: number[] }).output_ids.length, (JSON.parse(p.stdout) as { prompt_ids: number[] }).prompt_ids.length + 1);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('--quiet, --json, --device and --threads on every command that can take them', () => {
  const compute = ['eval', 'generate', 'block-ap', 'e2e-qp', 'quantize', 'demo'];
  for (const [name, cmd] of Object.entries(COMMANDS)) {
    for (const flag of ['quiet', 'json']) assert.ok(cmd.flags[flag], `eqat ${name} --${flag}`);
    if (compute.includes(name)) for (const flag of ['device', 'threads']) assert.ok(cmd.flags[flag], `eqat ${name} --${flag}`);
  }
  assert.deepEqual(Object.keys(COMMANDS).filter((n) => !compute.includes(n)), ['report', 'export'], 'export and report run no kernels: no --device, --threads');
  // the demo checks --device first, as the other compute commands do
  const r = eqat(['demo', '--device', 'cuda', '--quiet'], { EQAT_CUDA_DISABLE: '1' });
  assert.equal(r.status, 1);
  assert.equal(r.stderr.trim(), 'eqat: demo --device cuda: CUDA is not available: CUDA disabled by EQAT_CUDA_DISABLE=1');
});

const evalArgs = ['eval', '--model', TINY, '--data', EVAL_TEXT, '--seqlen', '32', '--batch', '1', '--max-windows', '3', '--threads', '1'];

test('results on stdout, progress on stderr as plain lines when stderr is no terminal; --quiet silences it; --json is the last stdout line', () => {
  const r = eqat(evalArgs);
  assert.equal(r.status, 0, r.stderr);
  assert.match(r.stdout, /^ppl \d+\.\d{4} {2}nll \d+\.\d{5} {2}windows 3 x 32 tokens {2}\d+\.\d s\n$/);
  assert.match(r.stderr, /^eval (\d+)\/\1 \(100%\) elapsed \d+s eta 0s$/m, 'a plain progress line');
  assert.doesNotMatch(r.stderr, /[\r\x1b]/, 'no carriage returns or escape codes off a terminal');

  const q = eqat([...evalArgs, '--quiet', '--json']);
  assert.equal(q.status, 0, q.stderr);
  assert.equal(q.stderr, '');
  const last = q.stdout.trim().split('\n').pop()!;
  const j = JSON.parse(last) as { ppl: number; windows: number };
  assert.equal(j.windows, 3);
  assert.ok(Number.isFinite(j.ppl));
});

/** `script` runs a command on a pseudo-terminal (util-linux); null where it is missing. */
function onTerminal(args: string[], env: Record<string, string>): string | null {
  const quote = (s: string): string => `'${s.replace(/'/g, `'\\''`)}'`;
  const cmd = [process.execPath, CLI, ...args].map(quote).join(' ') + ' >/dev/null';
  const r = spawnSync('script', ['-qec', cmd, '/dev/null'], { encoding: 'utf8', env: { ...process.env, ...env }, cwd: REPO, stdio: ['ignore', 'pipe', 'pipe'] });
  if (r.error || r.status !== 0) return null;
  return r.stdout;
}

test('on a terminal a bar is drawn, not on TERM=dumb; no colour codes, NO_COLOR or not', (t) => {
  const bar = onTerminal(evalArgs, { TERM: 'xterm', NO_COLOR: '1' });
  if (bar === null) return t.skip('script (util-linux) is not available to give the command a terminal');
  assert.match(bar, /eval \[[^\]]*\] 100% (\d+)\/\1/, 'a bar with its percentage');
  assert.match(bar, /\r|\x1b\[/, 'redrawn in place');
  assert.doesNotMatch(bar, /\x1b\[[0-9;]*m/, 'no colour (SGR) codes');
  const dumb = onTerminal(evalArgs, { TERM: 'dumb' })!;
  assert.match(dumb, /eval (\d+)\/\1 \(100%\) elapsed/, 'plain lines on a dumb terminal');
  assert.doesNotMatch(dumb, /\x1b/, 'no escape codes on a dumb terminal');
});

test('block numbers: 1-based in the progress lines a person reads, 0-based in block-ap-log.jsonl', () => {
  const dir = mkdtempSync(join(tmpdir(), 'eqat-cli-blocks-'));
  try {
    const out = join(dir, 'w2');
    const r = eqat(['block-ap', '--model', TINY, '--calib', CALIB, '--out', out, '--wbits', '2', '--group-size', '32',
      '--train-size', '4', '--val-size', '2', '--seqlen', '32', '--batch-size', '2', '--epochs', '1', '--threads', '1']);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /^wrote \S+w2 \(4 blocks, /);
    const lines = r.stderr.split('\n').filter((l) => /^block /.test(l));
    const blocks = new Set(lines.map((l) => /^block (\d+)\/4 /.exec(l)?.[1]));
    assert.deepEqual([...blocks].sort(), ['1', '2', '3', '4'], `blocks 1/4 to 4/4 on stderr:\n${r.stderr}`);
    assert.match(r.stderr, /^block 4\/4 epoch 1: train \S+ val \S+ \(\d+\.\d s\)$/m);
    assert.match(r.stderr, /^block 4\/4 step 2\/2 \(100%\) elapsed \d+s eta 0s loss \S+$/m, 'the step line names the block of 4 and the step of 2');
    const log = readFileSync(join(out, 'block-ap-log.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as { block: number });
    assert.deepEqual([...new Set(log.map((e) => e.block))], [0, 1, 2, 3]);
    assert.ok(!existsSync(out + '.partial'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
