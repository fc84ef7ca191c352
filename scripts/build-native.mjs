// Builds the native CPU addon (build/Release/eqat.node) with node-gyp, offline, in parallel.
//
// Incremental: when build/ is already configured for this binding.gyp, this Node (ABI, arch,
// headers) and the same kernel files, only `node-gyp build -j max` runs, and make recompiles
// just the files (and the files including headers) that changed: a one-line kernel edit
// rebuilds in seconds. Anything else (no build/, binding.gyp edited, a kernel file added or
// removed, another Node) is a full `node-gyp rebuild -j max`. EQAT_REBUILD=1 forces one.
//
// node-gyp: $npm_config_node_gyp (what npm sets for install scripts, or a user's own), else the
// node-gyp package, else the one npm bundles. node-gyp would otherwise try to download Node
// headers; the headers that ship with the running Node (<prefix>/include/node) are used when
// present (unless npm_config_nodedir names others).
//
// Prebuilt addon: the packed package carries prebuilds/linux-x64/eqat.node (Node-API, so one
// binary serves every Node >= 20), written by `npm pack` / `npm publish` (prepack: this script
// with --prebuild builds, then copies build/Release/eqat.node there). As the package's install
// script, this script uses that binary when it loads here (a child process requires it) and
// builds from source otherwise (an older glibc or libstdc++ than the build machine's), or when
// npm_config_build_from_source=true (`npm install --build-from-source`) or EQAT_BUILD_FROM_SOURCE=1.
// In a checkout (a .git beside package.json) `npm ci` and `npm run build` always compile.
// src/engine/native.ts loads build/Release/eqat.node when present, else the prebuilt one.
//
// reconfigureReason is exported for the tests; the build runs when this file is the entry point.
import { spawnSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, readdirSync, readFileSync, realpathSync, statSync } from 'node:fs';
import { delimiter, dirname, join, resolve } from 'node:path';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const say = (s) => process.stderr.write(`eqat: ${s}\n`);

/** The node-gyp entry point and where it came from. */
function findNodeGyp() {
  const fromEnv = process.env.npm_config_node_gyp;
  if (fromEnv) {
    if (!existsSync(fromEnv)) {
      say(`npm_config_node_gyp names ${fromEnv}, which does not exist`);
      process.exit(1);
    }
    return { path: fromEnv, from: 'npm_config_node_gyp' };
  }
  try {
    return { path: createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js'), from: 'the node-gyp package' };
  } catch {
    // npm bundles node-gyp next to itself.
    const prefix = dirname(dirname(process.execPath));
    const bundled = join(prefix, 'lib', 'node_modules', 'npm', 'node_modules', 'node-gyp', 'bin', 'node-gyp.js');
    if (existsSync(bundled)) return { path: bundled, from: "npm's bundled copy" };
    say(`node-gyp not found: set npm_config_node_gyp to its bin/node-gyp.js, or install it (npm install -g node-gyp); looked for ${bundled}`);
    process.exit(1);
  }
}

/**
 * Why <root>/build must be configured afresh, or null when an incremental build is enough;
 * `nodedir`: the Node headers the build will use (null: node-gyp's default).
 */
export function reconfigureReason(root, nodedir, env = process.env) {
  if (env.EQAT_REBUILD === '1') return 'EQAT_REBUILD=1';
  const build = join(root, 'build');
  const makefile = join(build, 'Makefile');
  const target = join(build, 'eqat.target.mk');
  const gypi = join(build, 'config.gypi');
  if (![makefile, target, gypi].every(existsSync)) return 'build/ is not configured';
  if (statSync(join(root, 'binding.gyp')).mtimeMs > statSync(makefile).mtimeMs) return 'binding.gyp changed';
  let config;
  try {
    // config.gypi is JSON apart from its leading '#' comment line
    config = JSON.parse(readFileSync(gypi, 'utf8').replace(/^#.*$/gm, ''));
  } catch {
    return 'build/config.gypi is unreadable';
  }
  const v = config.variables ?? {};
  if (String(v.node_module_version) !== process.versions.modules) {
    return `build/ was configured for Node ABI ${v.node_module_version}, this Node is ${process.versions.modules}`;
  }
  if (v.target_arch !== process.arch) return `build/ was configured for ${v.target_arch}`;
  if (nodedir && v.nodedir !== nodedir) return `build/ was configured with the headers of ${v.nodedir}, not ${nodedir}`;
  // binding.gyp lists native/cpu/*.cc and native/cuda/*.cc when configured: the same files now?
  const want = ['native/binding.cc', 'native/threadpool.cc'];
  for (const sub of ['cpu', 'cuda']) {
    for (const f of readdirSync(join(root, 'native', sub))) if (f.endsWith('.cc')) want.push(`native/${sub}/${f}`);
  }
  const have = [...readFileSync(target, 'utf8').matchAll(/\$\(TARGET\)\/(native\/\S+)\.o/g)].map((m) => m[1] + '.cc');
  const key = (a) => [...new Set(a)].sort().join('\n');
  if (key(want) !== key(have)) return 'kernel files were added or removed';
  return null;
}

/** The build tools that are not on PATH (after a failed build, to name the cause). */
function missingTools() {
  const onPath = (cmd) => (process.env.PATH ?? '').split(delimiter).some((d) => d && existsSync(join(d, cmd)));
  const missing = [];
  if (!onPath('make')) missing.push('make');
  const python = process.env.npm_config_python || process.env.PYTHON;
  if (python ? !existsSync(python) && !onPath(python) : !onPath('python3')) missing.push(python ? `python (${python})` : 'python3');
  const cxx = process.env.CXX;
  if (cxx ? !existsSync(cxx) && !onPath(cxx.split(' ')[0]) : !onPath('c++') && !onPath('g++')) missing.push(cxx ? `C++ compiler (CXX=${cxx})` : 'a C++17 compiler (c++ or g++)');
  return missing;
}

/** The prebuilt addon of this platform in a package rooted at `root` (it may not exist). */
export function prebuiltPath(root) {
  return join(root, 'prebuilds', `${process.platform}-${process.arch}`, 'eqat.node');
}

/** Null when the prebuilt addon loads in a fresh Node process, else why not. */
function prebuiltProblem(path) {
  const r = spawnSync(process.execPath, ['-e', 'require(process.argv[1]).cpuInfo()', path], { encoding: 'utf8' });
  if (r.status === 0) return null;
  return (r.error?.message ?? r.stderr.trim().split('\n').find((l) => /Error/.test(l)) ?? `exit ${r.status}`).slice(0, 300);
}

function main() {
  if (process.platform !== 'linux' || process.arch !== 'x64') {
    // npm refuses the package first (package.json "os"/"cpu"); this covers --force installs.
    say(`the native addon builds on Linux x64 only (x86-64 kernels, Linux CUDA loader); this is ${process.platform} ${process.arch}`);
    process.exit(1);
  }
  const root = dirname(dirname(fileURLToPath(import.meta.url)));
  const prebuilt = prebuiltPath(root);
  const fromSource = process.env.npm_config_build_from_source === 'true' || process.env.EQAT_BUILD_FROM_SOURCE === '1';
  // a checkout (.git) always compiles: a prebuilds/ left there by npm pack may be older than its sources
  if (process.env.npm_lifecycle_event === 'install' && existsSync(prebuilt) && !existsSync(join(root, '.git'))) {
    const problem = fromSource ? null : prebuiltProblem(prebuilt);
    if (!fromSource && problem === null) {
      say(`using the prebuilt addon ${prebuilt.slice(root.length + 1)} (npm install --build-from-source compiles it instead)`);
      return;
    }
    say(fromSource ? 'building the addon from source as asked' : `the prebuilt addon does not load here (${problem}); building from source`);
  }
  const gyp = findNodeGyp();
  const prefix = dirname(dirname(process.execPath));
  const nodedir = !process.env.npm_config_nodedir && existsSync(join(prefix, 'include', 'node', 'node.h')) ? prefix : null;
  const reason = reconfigureReason(root, nodedir ?? process.env.npm_config_nodedir ?? null);
  const args = [reason ? 'rebuild' : 'build', '--release', '-j', 'max'];
  if (nodedir) args.push(`--nodedir=${nodedir}`);
  say(reason ? `building the native addon (full build: ${reason})` : 'building the native addon (incremental: build/ is configured)');

  const run = gyp.path.endsWith('.js') ? [process.execPath, [gyp.path, ...args]] : [gyp.path, args];
  const r = spawnSync(run[0], run[1], { stdio: 'inherit', cwd: root });
  if (r.status !== 0) {
    const why = r.error ? `could not start node-gyp (${gyp.path}, from ${gyp.from}): ${r.error.message}` : `node-gyp exit ${r.status ?? r.signal}`;
    const missing = r.error ? [] : missingTools();
    const hint = missing.length
      ? `not found on PATH: ${missing.join(', ')}`
      : 'see its output above (it needs a C++17 compiler, make and python3)';
    say(`building the native addon failed: ${why}; ${hint}`);
    process.exit(r.status || 1);
  }
  if (process.argv.includes('--prebuild')) {
    // prepack: the package carries the binary just built
    mkdirSync(dirname(prebuilt), { recursive: true });
    copyFileSync(join(root, 'build', 'Release', 'eqat.node'), prebuilt);
    say(`prebuilt addon: ${prebuilt.slice(root.length + 1)}`);
  }
}

if (process.argv[1] && realpathSync(resolve(process.argv[1])) === fileURLToPath(import.meta.url)) main();
