// Versions recorded in every output eqat writes: eqat itself and the Node runtime.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { packageRoot } from './native.js';

export function eqatVersion(): { eqat: string; node: string } {
  const pkg = JSON.parse(readFileSync(join(packageRoot(), 'package.json'), 'utf8')) as { version: string };
  return { eqat: pkg.version, node: process.version };
}
