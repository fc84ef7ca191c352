// Builds the native CPU addon (build/Release/eqat.node) with node-gyp, offline.
// node-gyp would otherwise try to download Node headers; the headers that ship with the
// running Node (<prefix>/include/node) are used when present.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const prefix = dirname(dirname(process.execPath));
const args = ['rebuild', '--release'];
if (!process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node.h'))) {
  args.push(`--nodedir=${prefix}`);
}
let gyp;
try {
  gyp = require.resolve('node-gyp/bin/node-gyp.js');
} catch {
  // npm bundles node-gyp next to itself.
  const npmDir = join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
  gyp = npmDir;
}
const r = spawnSync(process.execPath, [gyp, ...args], { stdio: 'inherit' });
if (r.status !== 0) {
  console.error('eqat: building the native addon failed (node-gyp exit ' + r.status + '). A C++17 compiler, make and python3 are needed.');
  process.exit(r.status ?? 1);
}
