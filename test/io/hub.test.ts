// Hub names (src/io/hub.ts) against a hub served on 127.0.0.1 (test/io/fake-hub.ts) through
// the endpoint, with caches in temp dirs: the huggingface_hub cache layout (refs, snapshots as
// relative symlinks into blobs), a sharded model, revisions by branch and by sha, offline mode
// with a warm and a cold cache, no network, a repo id typo, gated repos (401 / 403), a sha256
// mismatch, an interrupted download that resumes with a range request, a local path that wins,
// and the eqat CLI reading a model by its hub name through HF_ENDPOINT. Nothing reaches the
// internet.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, readlinkSync, readdirSync, rmSync, writeFileSync, cpSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { spawn } from 'node:child_process';
import { createServer } from 'node:net';
import { FakeHub, fakeSha, sha256, gitBlobSha1 } from './fake-hub.js';
import { HubError, hubCacheDir, hubDatasetFiles, hubEndpoint, hubOffline, parseHubName, repoFolder, resolveModel, type HubOptions } from '../../src/io/hub.js';
import { SafetensorsFile, SafetensorsModel } from '../../src/io/safetensors.js';
import { WeightSource } from '../../src/model/weights.js';
import { REPO, TINY } from '../golden.js';

const work = mkdtempSync(join(tmpdir(), 'eqat-hub-'));
process.on('exit', () => rmSync(work, { recursive: true, force: true }));
let caches = 0;
const freshCache = () => join(work, `cache-${caches++}`);

const hub = new FakeHub();
const tinyFiles: Record<string, Buffer> = {};
for (const f of ['config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'model.safetensors']) tinyFiles[f] = readFileSync(join(TINY, f));
// files a model download must leave alone
const extras = { 'README.md': Buffer.from('# tiny\n'), 'pytorch_model.bin': Buffer.from('not wanted'), 'original/consolidated.pth': Buffer.from('not wanted') };

/** llama-tiny's model.safetensors split into two shards with an index. */
function shardTiny(): Record<string, Buffer> {
  const f = SafetensorsFile.open(join(TINY, 'model.safetensors'));
  try {
    const names = f.names();
    const halves = [names.slice(0, names.length >> 1), names.slice(names.length >> 1)];
    const out: Record<string, Buffer> = {};
    const weightMap: Record<string, string> = {};
    halves.forEach((group, k) => {
      const file = `model-0000${k + 1}-of-00002.safetensors`;
      const header: Record<string, unknown> = {};
      const bodies: Buffer[] = [];
      let off = 0;
      for (const n of group) {
        const info = f.info(n);
        const raw = Buffer.from(f.readRaw(n));
        header[n] = { dtype: info.dtype, shape: info.shape, data_offsets: [off, off + raw.length] };
        bodies.push(raw);
        off += raw.length;
        weightMap[n] = file;
      }
      let json = Buffer.from(JSON.stringify(header));
      json = Buffer.concat([json, Buffer.alloc((8 - (json.length % 8)) % 8, 0x20)]);
      const len = Buffer.alloc(8);
      len.writeBigUInt64LE(BigInt(json.length));
      out[file] = Buffer.concat([len, json, ...bodies]);
    });
    out['model.safetensors.index.json'] = Buffer.from(JSON.stringify({ metadata: {}, weight_map: weightMap }, null, 2));
    return out;
  } finally {
    f.close();
  }
}

const SHA_A = fakeSha('tiny-a');
const SHA_B = fakeSha('tiny-b');
const configB = Buffer.from(JSON.stringify({ ...JSON.parse(tinyFiles['config.json']!.toString()), eqat_test_revision: 'b' }, null, 2));
const { 'model.safetensors': _single, ...tinyNoWeights } = tinyFiles;
const SHARDED_SHA = fakeSha('sharded');

hub.add({ type: 'model', id: 'test-org/llama-tiny', refs: { main: SHA_A, v2: SHA_B }, commits: [
  { sha: SHA_A, files: { ...tinyFiles, ...extras } },
  { sha: SHA_B, files: { ...tinyFiles, 'config.json': configB } },
] });
hub.add({ type: 'model', id: 'test-org/llama-tiny-sharded', refs: { main: SHARDED_SHA }, commits: [{ sha: SHARDED_SHA, files: { ...tinyNoWeights, ...shardTiny(), 'consolidated.safetensors': Buffer.from('mistral-style duplicate, not wanted') } }] });
hub.add({ type: 'model', id: 'test-org/gated-tiny', gated: true, refs: { main: fakeSha('gated') }, commits: [{ sha: fakeSha('gated'), files: tinyFiles }] });
hub.add({ type: 'model', id: 'test-org/bin-only', refs: { main: fakeSha('bin') }, commits: [{ sha: fakeSha('bin'), files: { 'config.json': tinyFiles['config.json']!, 'pytorch_model.bin': Buffer.from('x') } }] });
const PARQUET = readFileSync(join(REPO, 'test', 'fixtures', 'docs-snappy.parquet'));
hub.add({ type: 'dataset', id: 'test-org/wikitext', refs: { main: fakeSha('wt') }, commits: [{ sha: fakeSha('wt'), files: { 'wikitext-2-raw-v1/test-00000-of-00001.parquet': PARQUET, 'README.md': Buffer.from('data') } }] });

let endpoint = '';
before(async () => {
  endpoint = await hub.start();
});
after(async () => {
  await hub.stop();
});

const opts = (cacheDir: string, more: HubOptions = {}): HubOptions => ({ cacheDir, endpoint, token: null, offline: false, quiet: true, ...more });

test('parseHubName: org/name[@revision] only; paths are never hub names', () => {
  assert.deepEqual(parseHubName('meta-llama/Llama-2-7b-hf'), { repo: 'meta-llama/Llama-2-7b-hf', revision: null });
  assert.deepEqual(parseHubName('Qwen/Qwen2.5-0.5B@main'), { repo: 'Qwen/Qwen2.5-0.5B', revision: 'main' });
  assert.deepEqual(parseHubName(`a/b@${SHA_A}`), { repo: 'a/b', revision: SHA_A });
  assert.deepEqual(parseHubName('a/b@refs/pr/1'), { repo: 'a/b', revision: 'refs/pr/1' });
  for (const notName of ['./a/b', '/a/b', '~/a', 'a', 'a/b/c', 'a\\b', '../x', 'a/..', 'a--b/c', 'a/b@', 'a/b@x y', '']) {
    assert.equal(parseHubName(notName), null, notName);
  }
});

test('hub settings from the environment: HF_HUB_CACHE, HF_HOME, HF_ENDPOINT, HF_HUB_OFFLINE', () => {
  assert.equal(hubCacheDir({ HF_HUB_CACHE: '/c' }), '/c');
  assert.equal(hubCacheDir({ HF_HOME: '/h' }), join('/h', 'hub'));
  assert.equal(hubCacheDir({ XDG_CACHE_HOME: '/x' }), join('/x', 'huggingface', 'hub'));
  assert.equal(hubEndpoint({ HF_ENDPOINT: 'http://127.0.0.1:1/' }), 'http://127.0.0.1:1');
  assert.equal(hubEndpoint({}), 'https://huggingface.co');
  for (const v of ['1', 'true', 'YES', 'on']) assert.equal(hubOffline({ HF_HUB_OFFLINE: v }), true, v);
  for (const v of ['0', 'false', '']) assert.equal(hubOffline({ HF_HUB_OFFLINE: v }), false, v);
  assert.equal(hubOffline({}), false);
});

test('a model by name: downloaded into the huggingface_hub layout, only the files needed, then served from the cache', async () => {
  const cache = freshCache();
  const dir = await resolveModel('test-org/llama-tiny', opts(cache));
  const storage = repoFolder(cache, 'model', 'test-org/llama-tiny');
  assert.equal(dir, join(storage, 'snapshots', SHA_A));
  assert.equal(readFileSync(join(storage, 'refs', 'main'), 'utf8'), SHA_A);
  assert.deepEqual(readdirSync(dir).sort(), Object.keys(tinyFiles).sort());
  for (const [name, bytes] of Object.entries(tinyFiles)) {
    const p = join(dir, name);
    assert.ok(lstatSync(p).isSymbolicLink(), `${name} is a symlink`);
    const etag = name.endsWith('.safetensors') ? sha256(bytes) : gitBlobSha1(bytes);
    assert.equal(readlinkSync(p), join('..', '..', 'blobs', etag), `${name} links to its blob`);
    assert.ok(readFileSync(p).equals(bytes), `${name} content`);
  }
  assert.equal(readdirSync(join(storage, 'blobs')).filter((f) => f.endsWith('.incomplete')).length, 0);
  const src = WeightSource.open(dir);
  src.close();
  // a second resolution asks for the revision and the file list, downloads nothing
  const before = hub.log.length;
  assert.equal(await resolveModel('test-org/llama-tiny', opts(cache)), dir);
  assert.equal(hub.log.slice(before).filter((r) => r.url.includes('/resolve/')).length, 0);
});

test('a sharded model: the index and the shards it names (not consolidated.safetensors)', async () => {
  const cache = freshCache();
  const dir = await resolveModel('test-org/llama-tiny-sharded', opts(cache));
  assert.deepEqual(readdirSync(dir).filter((f) => f.includes('safetensors')).sort(), ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors', 'model.safetensors.index.json']);
  const src = SafetensorsModel.open(dir);
  const ref = SafetensorsModel.open(TINY);
  try {
    assert.deepEqual(src.names().sort(), ref.names().sort());
    for (const name of ref.names()) assert.ok(Buffer.from(src.readRaw(name)).equals(Buffer.from(ref.readRaw(name))), name);
  } finally {
    src.close();
    ref.close();
  }
});

test('revisions: @branch resolves through refs/<branch>, @sha names the snapshot; a cached sha needs no request', async () => {
  const cache = freshCache();
  const v2 = await resolveModel('test-org/llama-tiny@v2', opts(cache));
  const storage = repoFolder(cache, 'model', 'test-org/llama-tiny');
  assert.equal(v2, join(storage, 'snapshots', SHA_B));
  assert.equal(readFileSync(join(storage, 'refs', 'v2'), 'utf8'), SHA_B);
  assert.equal(JSON.parse(readFileSync(join(v2, 'config.json'), 'utf8')).eqat_test_revision, 'b');
  // the weights are one blob shared by both snapshots
  const a = await resolveModel(`test-org/llama-tiny@${SHA_A}`, opts(cache));
  assert.equal(a, join(storage, 'snapshots', SHA_A));
  assert.equal(existsSync(join(storage, 'refs', SHA_A)), false);
  assert.equal(readdirSync(join(storage, 'blobs')).filter((b) => b === sha256(tinyFiles['model.safetensors']!)).length, 1);
  const before = hub.log.length;
  assert.equal(await resolveModel(`test-org/llama-tiny@${SHA_A}`, opts(cache)), a);
  assert.equal(hub.log.length, before, 'no request for a cached commit');
  await assert.rejects(resolveModel('test-org/llama-tiny@v3', opts(cache)), (e: Error) => e instanceof HubError && /test-org\/llama-tiny has no revision 'v3'.*check its spelling/.test(e.message));
});

test('offline mode: a warm cache answers without a request; a cold cache is an error naming the repo and the way out', async () => {
  const cache = freshCache();
  await resolveModel('test-org/llama-tiny@v2', opts(cache));
  const before = hub.log.length;
  const dir = await resolveModel('test-org/llama-tiny@v2', opts(cache, { offline: true, endpoint: 'http://127.0.0.1:9' }));
  assert.equal(dir, join(repoFolder(cache, 'model', 'test-org/llama-tiny'), 'snapshots', SHA_B));
  assert.equal(hub.log.length, before);
  // main was never resolved in this cache
  await assert.rejects(
    resolveModel('test-org/llama-tiny', opts(cache, { offline: true, flag: '--model' })),
    (e: Error) => e instanceof HubError && /^--model test-org\/llama-tiny: offline mode \(HF_HUB_OFFLINE=.*\) and the cache has no record of revision 'main'.*unset HF_HUB_OFFLINE/.test(e.message),
  );
  await assert.rejects(
    resolveModel('test-org/llama-tiny', opts(freshCache(), { offline: true })),
    (e: Error) => /offline mode .* nothing of it is in the cache .*huggingface-cli download test-org\/llama-tiny/.test(e.message),
  );
  // a snapshot that lost a shard is cold too
  rmSync(join(dir, 'model.safetensors'));
  await assert.rejects(resolveModel('test-org/llama-tiny@v2', opts(cache, { offline: true })), /lacks model\.safetensors/);
  // online, the missing file comes back from its blob without a download
  const n = hub.downloads('model.safetensors').length;
  await resolveModel('test-org/llama-tiny@v2', opts(cache));
  assert.equal(hub.downloads('model.safetensors').length, n);
  assert.ok(existsSync(join(dir, 'model.safetensors')));
});

test('no network: a cold cache names the endpoint and HF_HUB_OFFLINE; a warm one is used with a warning', async () => {
  // a port nobody listens on
  const srv = createServer();
  await new Promise<void>((ok) => srv.listen(0, '127.0.0.1', ok));
  const port = (srv.address() as { port: number }).port;
  await new Promise<void>((ok) => srv.close(() => ok()));
  const dead = `http://127.0.0.1:${port}`;
  await assert.rejects(
    resolveModel('test-org/llama-tiny', opts(freshCache(), { endpoint: dead })),
    (e: Error) => e instanceof HubError && new RegExp(`cannot reach ${dead.replace(/\./g, '\\.')} .*ECONNREFUSED.*HF_HUB_OFFLINE=1`).test(e.message),
  );
  const cache = freshCache();
  const dir = await resolveModel('test-org/llama-tiny', opts(cache));
  assert.equal(await resolveModel('test-org/llama-tiny', opts(cache, { endpoint: dead })), dir);
});

test('a repo id typo: no such model, check the spelling (with and without a token)', async () => {
  for (const token of [null, 'hf_good']) {
    await assert.rejects(
      resolveModel('test-org/llama-tinyy', opts(freshCache(), { token, flag: '--model' })),
      (e: Error) => e instanceof HubError && e.repo === 'test-org/llama-tinyy' && /^--model test-org\/llama-tinyy: no model test-org\/llama-tinyy on http.*no local path of that name exists; check the spelling/.test(e.message),
    );
  }
  await assert.rejects(hubDatasetFiles('test-org/wikitex', ['x.parquet'], null, opts(freshCache())), /no dataset test-org\/wikitex on .*check the spelling/);
  await assert.rejects(hubDatasetFiles('test-org/wikitext', ['nope.parquet'], null, opts(freshCache())), /dataset test-org\/wikitext has no file 'nope\.parquet'/);
});

test('gated repos: 401 without a token, 403 with one that has no access; the error says how to get access', async () => {
  await assert.rejects(resolveModel('test-org/gated-tiny', opts(freshCache())), (e: Error) => /test-org\/gated-tiny is a gated model: it needs an access token; accept its conditions at http.*\/test-org\/gated-tiny .*set HF_TOKEN/.test(e.message));
  await assert.rejects(resolveModel('test-org/gated-tiny', opts(freshCache(), { token: 'hf_other' })), /gated model: the token in HF_TOKEN has no access to it yet/);
  const dir = await resolveModel('test-org/gated-tiny', opts(freshCache(), { token: 'hf_good' }));
  assert.ok(existsSync(join(dir, 'model.safetensors')));
  assert.ok(hub.log.some((r) => r.auth === 'Bearer hf_good'));
  await assert.rejects(resolveModel('test-org/gated-tiny', opts(freshCache(), { token: 'secret' })), /does not look like a Hugging Face token/);
});

test('no safetensors weights: refused naming what the repo has', async () => {
  await assert.rejects(resolveModel('test-org/bin-only', opts(freshCache())), /test-org\/bin-only has no safetensors weights \(it has pytorch_model\.bin\); eqat reads safetensors only/);
});

test('a download that does not match the hub sha256 is deleted and refused; the next run downloads it anew', async () => {
  const cache = freshCache();
  const good = tinyFiles['model.safetensors']!;
  const bad = Buffer.from(good);
  bad[bad.length - 1] ^= 0xff;
  hub.corrupt.set('model.safetensors', bad);
  try {
    await assert.rejects(
      resolveModel('test-org/llama-tiny', opts(cache)),
      (e: Error) => e instanceof HubError && new RegExp(`model\\.safetensors downloaded from .* does not match the hub's sha256 \\(expected ${sha256(good)}, got ${sha256(bad)}\\); the download was deleted`).test(e.message),
    );
  } finally {
    hub.corrupt.delete('model.safetensors');
  }
  const blobs = join(repoFolder(cache, 'model', 'test-org/llama-tiny'), 'blobs');
  assert.deepEqual(readdirSync(blobs).filter((f) => f.endsWith('.incomplete')), []);
  const dir = await resolveModel('test-org/llama-tiny', opts(cache));
  assert.ok(readFileSync(join(dir, 'model.safetensors')).equals(good));
});

test('an interrupted download resumes from the .incomplete file with a range request', async () => {
  const cache = freshCache();
  const good = tinyFiles['model.safetensors']!;
  const cut = 1_000_000;
  hub.cutAfter.set('model.safetensors', cut);
  await assert.rejects(resolveModel('test-org/llama-tiny', opts(cache)), /the download of model\.safetensors stopped at \d+ of \d+ bytes .*run the command again to resume it/);
  const incomplete = join(repoFolder(cache, 'model', 'test-org/llama-tiny'), 'blobs', `${sha256(good)}.incomplete`);
  const kept = readFileSync(incomplete).length;
  assert.ok(kept > 0 && kept <= cut, `kept ${kept} bytes`);
  const n = hub.downloads('model.safetensors').length;
  const dir = await resolveModel('test-org/llama-tiny', opts(cache));
  const resumed = hub.downloads('model.safetensors').slice(n);
  assert.deepEqual(resumed.map((r) => r.range), [`bytes=${kept}-${good.length - 1}`]);
  assert.ok(readFileSync(join(dir, 'model.safetensors')).equals(good));
  assert.equal(existsSync(incomplete), false);
});

test('two runs resolving the same model at once download each file once (a lock per blob)', async () => {
  const cache = freshCache();
  const n = hub.downloads('model.safetensors').length;
  const [a, b] = await Promise.all([resolveModel('test-org/llama-tiny', opts(cache)), resolveModel('test-org/llama-tiny', opts(cache))]);
  assert.equal(a, b);
  assert.equal(hub.downloads('model.safetensors').length, n + 1);
  assert.ok(readFileSync(join(a, 'model.safetensors')).equals(tinyFiles['model.safetensors']!));
  const blobs = join(repoFolder(cache, 'model', 'test-org/llama-tiny'), 'blobs');
  assert.deepEqual(readdirSync(blobs).filter((f) => f.endsWith('.lock') || f.endsWith('.incomplete')), []);
  // a lock whose owner is gone is taken over
  const cache2 = freshCache();
  const blobs2 = join(repoFolder(cache2, 'model', 'test-org/llama-tiny'), 'blobs');
  mkdirSync(blobs2, { recursive: true });
  writeFileSync(join(blobs2, `${sha256(tinyFiles['model.safetensors']!)}.lock`), `999999999 ${hostname()}\n`);
  await resolveModel('test-org/llama-tiny', opts(cache2));
});

test('a local path that exists wins over the hub name', async () => {
  const cwd = process.cwd();
  const base = join(work, 'local');
  mkdirSync(join(base, 'test-org'), { recursive: true });
  cpSync(TINY, join(base, 'test-org', 'llama-tiny'), { recursive: true });
  process.chdir(base);
  try {
    const before = hub.log.length;
    assert.equal(await resolveModel('test-org/llama-tiny', opts(freshCache())), 'test-org/llama-tiny');
    assert.equal(hub.log.length, before);
  } finally {
    process.chdir(cwd);
  }
  // neither a path nor a hub name: returned as is, for the caller's path check
  assert.equal(await resolveModel('./no/such/dir', opts(freshCache())), './no/such/dir');
});

test('dataset files by repo and path', async () => {
  const cache = freshCache();
  const [p] = await hubDatasetFiles('test-org/wikitext', ['wikitext-2-raw-v1/test-00000-of-00001.parquet'], null, opts(cache));
  assert.equal(p, join(repoFolder(cache, 'dataset', 'test-org/wikitext'), 'snapshots', fakeSha('wt'), 'wikitext-2-raw-v1', 'test-00000-of-00001.parquet'));
  assert.ok(readFileSync(p!).equals(PARQUET));
  assert.equal(readlinkSync(p!), join('..', '..', '..', 'blobs', sha256(PARQUET)));
  const [q] = await hubDatasetFiles('test-org/wikitext', ['wikitext-2-raw-v1/test-00000-of-00001.parquet'], null, opts(cache, { offline: true }));
  assert.equal(q, p);
});

function runCli(args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((ok) => {
    const child = spawn(process.execPath, [join(REPO, 'dist', 'src', 'cli', 'main.js'), ...args], { env: { ...process.env, ...env }, cwd: work });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('close', (code) => ok({ code, stdout, stderr }));
  });
}

test('eqat eval --model org/name through HF_ENDPOINT, then offline from the same cache; a typo exits 1 naming the repo', async () => {
  const home = join(work, 'hf-home');
  const data = resolve(REPO, 'fixtures', 'text', 'eval-sample.txt');
  const env = { HF_HOME: home, HF_ENDPOINT: endpoint, HF_HUB_CACHE: '', HF_TOKEN: '', HF_HUB_OFFLINE: '' };
  delete (env as Record<string, string>)['HF_HUB_CACHE'];
  const args = ['eval', '--model', 'test-org/llama-tiny-sharded', '--data', data, '--seqlen', '32', '--max-windows', '1', '--json'];
  const online = await runCli(args, env);
  assert.equal(online.code, 0, online.stderr);
  const ppl = JSON.parse(online.stdout.trim().split('\n').pop()!).ppl as number;
  assert.ok(Number.isFinite(ppl));
  assert.ok(existsSync(join(home, 'hub', 'models--test-org--llama-tiny-sharded', 'refs', 'main')));
  const offline = await runCli(args, { ...env, HF_HUB_OFFLINE: '1', HF_ENDPOINT: 'http://127.0.0.1:9' });
  assert.equal(offline.code, 0, offline.stderr);
  assert.equal(JSON.parse(offline.stdout.trim().split('\n').pop()!).ppl, ppl);
  const typo = await runCli(['eval', '--model', 'test-org/llama-tiny-shardd', '--data', data, '--seqlen', '32'], env);
  assert.equal(typo.code, 1);
  assert.match(typo.stderr, /^eqat: --model test-org\/llama-tiny-shardd: no model test-org\/llama-tiny-shardd on .*check the spelling/);
  const cold = await runCli(['eval', '--model', 'test-org/llama-tiny@v2', '--data', data, '--seqlen', '32'], { ...env, HF_HUB_OFFLINE: '1' });
  assert.equal(cold.code, 1);
  assert.match(cold.stderr, /--model test-org\/llama-tiny@v2: offline mode/);
});
