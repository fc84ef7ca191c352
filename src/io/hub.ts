// Models and datasets by their Hugging Face names: `org/name[@revision]` resolved through the
// standard Hugging Face cache, shared with the Python tools (huggingface_hub, transformers,
// datasets), and downloaded with the maintained client (@huggingface/hub) when files are missing.
//
// The cache (the layout huggingface_hub writes):
//   $HF_HUB_CACHE (default $HF_HOME/hub, $HF_HOME default $XDG_CACHE_HOME/huggingface or
//   ~/.cache/huggingface)/
//     models--org--name/                  (datasets--org--name/ for datasets)
//       refs/<revision>                   the commit a branch or tag pointed to when last resolved
//       snapshots/<commit sha>/<path>     symlinks (relative) into blobs/
//       blobs/<etag>                      file contents; etag = the LFS sha256 for LFS files, the
//                                         git blob sha1 otherwise; <etag>.incomplete while downloading
//
// Resolution of a name (resolveModel, hubDatasetFiles):
//   - a local path that exists always wins over a hub name; only `org/name` or `org/name@rev`
//     (no leading ./ / ~, exactly one / before any @) is a hub name;
//   - HF_HUB_OFFLINE=1 (or true/yes/on): no network; the revision is a commit sha or read from
//     refs/<revision>; the snapshot must hold every file needed, else an error naming the repo
//     and what to do;
//   - online: the hub is asked which commit the revision is (HF_ENDPOINT, HF_TOKEN), the file
//     list of that commit is read, refs/<revision> is written, and every needed file that the
//     snapshot lacks is downloaded into blobs/ (to <etag>.incomplete first, resumed from its
//     length with an HTTP range request when a run was interrupted, verified against the LFS
//     sha256 or the git blob sha1 the hub lists, then renamed) and linked from the snapshot.
//     A revision given as a commit sha whose snapshot is complete is used without any request;
//   - no network while online: a complete cached snapshot of the revision is used with a
//     warning (as huggingface_hub does); otherwise an error names the endpoint and the way out.
//
// Which files a model needs (modelFiles): config.json, generation_config.json, the tokenizer
// files (tokenizer.json, tokenizer_config.json, tokenizer.model, special_tokens_map.json,
// added_tokens.json, vocab.json, merges.txt, chat templates), the other small top-level .json
// files (quantization configs, eqat records), and the safetensors weights: the shards named by
// model.safetensors.index.json with the index, else model.safetensors, else every top-level
// .safetensors file. PyTorch .bin, GGUF, ONNX and sub-folders (original/) are never downloaded.
//
// Errors are HubErrors naming the repo and what to do: a gated repo (accept the license, set
// HF_TOKEN), a repo id or revision that does not exist (check the spelling), a token that is
// refused, no network, offline mode with a cold cache, a checksum mismatch.
import { createHash } from 'node:crypto';
import { closeSync, existsSync, fstatSync, lstatSync, mkdirSync, openSync, readFileSync, readSync, renameSync, rmSync, statSync, symlinkSync, copyFileSync, unlinkSync, writeFileSync, writeSync } from 'node:fs';
import { homedir, hostname } from 'node:os';
import { dirname, join, relative } from 'node:path';
import cliProgress from 'cli-progress';
import { stderrIsInteractive } from '../cli/progress.js';

/** The kinds of hub repository eqat reads. */
export type HubRepoType = 'model' | 'dataset';

/** A hub name split into repo id and revision (null: the default branch, main). */
export interface HubName {
  repo: string;
  revision: string | null;
}

/** Where and how the hub is reached; every field defaults to the environment (hubSettings). */
export interface HubOptions {
  /** Cache directory (default: HF_HUB_CACHE, HF_HOME/hub, ~/.cache/huggingface/hub). */
  cacheDir?: string;
  /** Hub URL (default: HF_ENDPOINT or https://huggingface.co). */
  endpoint?: string;
  /** Access token (default: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, or the token file of huggingface-cli login). */
  token?: string | null;
  /** Never use the network (default: HF_HUB_OFFLINE). */
  offline?: boolean;
  /** No progress output on stderr. */
  quiet?: boolean;
  /** The flag or recipe key the name came from, for messages (`--model`). */
  flag?: string;
  /**
   * Called with the snapshot directory once the small files (config, tokenizer) are in place and
   * before the weights are downloaded, so that a command can refuse a model before a long download.
   */
  beforeWeights?: (dir: string) => void;
}

/** A problem reaching or reading the hub or its cache; the message names the repo and what to do. */
export class HubError extends Error {
  readonly repo: string;
  constructor(repo: string, message: string) {
    super(message);
    this.name = 'HubError';
    this.repo = repo;
  }
}

const DEFAULT_ENDPOINT = 'https://huggingface.co';
const SHA_RE = /^[0-9a-f]{40}$/;
// namespace/name as the hub accepts them (letters, digits, - _ .), an optional @revision
const NAME_RE = /^([A-Za-z0-9][A-Za-z0-9_.-]*\/[A-Za-z0-9_.-]+)(?:@([^\s@]+))?$/;

function expandUser(p: string): string {
  return p === '~' || p.startsWith('~/') ? join(homedir(), p.slice(1)) : p;
}

function isTrue(v: string | undefined): boolean {
  return v !== undefined && ['1', 'ON', 'YES', 'TRUE'].includes(v.trim().toUpperCase());
}

/** The Hugging Face hub cache directory, as huggingface_hub computes it. */
export function hubCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  const explicit = env['HF_HUB_CACHE'] ?? env['HUGGINGFACE_HUB_CACHE'];
  if (explicit) return expandUser(explicit);
  const home = env['HF_HOME'] ? expandUser(env['HF_HOME']) : join(env['XDG_CACHE_HOME'] ? expandUser(env['XDG_CACHE_HOME']) : join(homedir(), '.cache'), 'huggingface');
  return join(home, 'hub');
}

/** The hub URL: HF_ENDPOINT without a trailing slash, or https://huggingface.co. */
export function hubEndpoint(env: NodeJS.ProcessEnv = process.env): string {
  return (env['HF_ENDPOINT'] || DEFAULT_ENDPOINT).replace(/\/+$/, '');
}

/** True when HF_HUB_OFFLINE asks for no network (1, true, yes, on). */
export function hubOffline(env: NodeJS.ProcessEnv = process.env): boolean {
  return isTrue(env['HF_HUB_OFFLINE']);
}

/** The access token: HF_TOKEN, HUGGING_FACE_HUB_TOKEN, else the file `huggingface-cli login` writes; null when none. */
export function hubToken(env: NodeJS.ProcessEnv = process.env): string | null {
  const t = env['HF_TOKEN'] ?? env['HUGGING_FACE_HUB_TOKEN'];
  if (t !== undefined && t.trim() !== '') return t.trim();
  const home = env['HF_HOME'] ? expandUser(env['HF_HOME']) : join(env['XDG_CACHE_HOME'] ? expandUser(env['XDG_CACHE_HOME']) : join(homedir(), '.cache'), 'huggingface');
  const file = env['HF_TOKEN_PATH'] ? expandUser(env['HF_TOKEN_PATH']) : join(home, 'token');
  try {
    const v = readFileSync(file, 'utf8').trim();
    return v === '' ? null : v;
  } catch {
    return null;
  }
}

/**
 * The hub name in `s` (`org/name` or `org/name@revision`), or null when `s` is not one: a path
 * (./x, /x, ~/x, a/b/c, x\y, x.txt with no slash) never is. Whether a local path of that name
 * exists is the caller's question (a local path always wins).
 */
export function parseHubName(s: string): HubName | null {
  const m = NAME_RE.exec(s);
  if (!m) return null;
  const repo = m[1]!;
  const [org, name] = repo.split('/') as [string, string];
  if ([org, name].some((x) => x === '.' || x === '..' || x.includes('--') || x.includes('..') || x.endsWith('.') || x.length > 96)) return null;
  return { repo, revision: m[2] ?? null };
}

/** `org/name@rev` as written back in messages. */
export function formatHubName(n: HubName): string {
  return n.revision ? `${n.repo}@${n.revision}` : n.repo;
}

/** The cache folder of a repo: models--org--name or datasets--org--name. */
export function repoFolder(cacheDir: string, type: HubRepoType, repo: string): string {
  return join(cacheDir, `${type}s--${repo.split('/').join('--')}`);
}

/** A file of a repo as the hub lists it. */
export interface HubFileEntry {
  path: string;
  size: number;
  /** git blob sha1 */
  oid: string;
  /** LFS pointer: sha256 of the contents, and their size. */
  lfs?: { oid: string; size: number };
}

/** What a resolved snapshot holds. */
export interface HubSnapshot {
  /** snapshots/<sha>/ in the cache. */
  dir: string;
  /** The commit. */
  sha: string;
  repo: string;
  type: HubRepoType;
  /** The files the caller asked for, as paths relative to dir. */
  files: string[];
}

/** Which files to fetch from a repo's file list: `small` first, then `large` (after beforeWeights). */
interface FileSelection {
  /** From the listing (online): the files to fetch, in two stages. */
  select(listing: HubFileEntry[], snapshotDir: string, fetchSmall: (entries: HubFileEntry[]) => Promise<void>): Promise<{ small: HubFileEntry[]; large: HubFileEntry[] }>;
  /** From a cached snapshot (offline): the needed files it lacks (empty: complete), or null when it cannot say. */
  missing(snapshotDir: string): string[];
}

const repoLabel = (type: HubRepoType, repo: string) => (type === 'dataset' ? `dataset ${repo}` : repo);

// -----------------------------------------------------------------------------------------
// What a model needs

const TOKENIZER_FILES = ['tokenizer.json', 'tokenizer_config.json', 'tokenizer.model', 'special_tokens_map.json', 'added_tokens.json', 'vocab.json', 'merges.txt', 'chat_template.jinja', 'chat_template.json'];
const INDEX_FILE = 'model.safetensors.index.json';
const SINGLE_FILE = 'model.safetensors';
/** Small top-level files above this size are not fetched (a stray data file). */
const SMALL_JSON_LIMIT = 16 * 2 ** 20;

function shardsOfIndex(path: string, repo: string): string[] {
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(path, 'utf8'));
  } catch (e) {
    throw new HubError(repo, `${path}: ${repo}'s ${INDEX_FILE} is not valid JSON (${(e as Error).message})`);
  }
  const map = (json as { weight_map?: unknown })?.weight_map;
  if (typeof map !== 'object' || map === null) throw new HubError(repo, `${path}: ${repo}'s ${INDEX_FILE} has no weight_map`);
  return [...new Set(Object.values(map as Record<string, unknown>).filter((v): v is string => typeof v === 'string'))].sort();
}

function modelFiles(repo: string): FileSelection {
  return {
    async select(listing, dir, fetchSmall) {
      const top = listing.filter((e) => !e.path.includes('/'));
      const byPath = new Map(top.map((e) => [e.path, e]));
      const small = top.filter(
        (e) => TOKENIZER_FILES.includes(e.path) || (e.path.endsWith('.json') && !e.lfs && e.size <= SMALL_JSON_LIMIT) || e.path === 'config.json' || e.path === 'generation_config.json',
      );
      if (!byPath.has('config.json')) {
        throw new HubError(repo, `${repo} has no config.json: it is not a Hugging Face transformers model eqat can read (files: ${preview(top.map((e) => e.path))})`);
      }
      let large: HubFileEntry[];
      if (byPath.has(INDEX_FILE)) {
        if (!small.some((e) => e.path === INDEX_FILE)) small.push(byPath.get(INDEX_FILE)!);
        await fetchSmall(small);
        const shards = shardsOfIndex(join(dir, INDEX_FILE), repo);
        const absent = shards.filter((s) => !byPath.has(s));
        if (absent.length) throw new HubError(repo, `${repo}: ${INDEX_FILE} names shards the repo does not have: ${preview(absent)}`);
        large = shards.map((s) => byPath.get(s)!);
      } else {
        await fetchSmall(small);
        const st = top.filter((e) => e.path.endsWith('.safetensors'));
        large = byPath.has(SINGLE_FILE) ? [byPath.get(SINGLE_FILE)!] : st;
      }
      if (large.length === 0) {
        const other = top.filter((e) => /\.(bin|pth|pt|gguf|h5|msgpack|ckpt)$/.test(e.path)).map((e) => e.path);
        throw new HubError(
          repo,
          `${repo} has no safetensors weights${other.length ? ` (it has ${preview(other)})` : ''}; eqat reads safetensors only: pick a repo or revision with .safetensors files, or convert the checkpoint (transformers: save_pretrained(..., safe_serialization=True))`,
        );
      }
      return { small, large };
    },
    missing(dir) {
      const need = ['config.json'];
      if (existsSync(join(dir, INDEX_FILE))) {
        try {
          need.push(...shardsOfIndex(join(dir, INDEX_FILE), repo));
        } catch {
          need.push(INDEX_FILE + ' (unreadable)');
        }
      } else if (!existsSync(join(dir, SINGLE_FILE))) {
        need.push(SINGLE_FILE);
      }
      return need.filter((f) => !existsSync(join(dir, f)));
    },
  };
}

/** Exactly these paths. */
function exactFiles(type: HubRepoType, repo: string, paths: readonly string[]): FileSelection {
  return {
    async select(listing, _dir, fetchSmall) {
      const byPath = new Map(listing.map((e) => [e.path, e]));
      const absent = paths.filter((p) => !byPath.has(p));
      if (absent.length) {
        throw new HubError(repo, `${repoLabel(type, repo)} has no file ${absent.map((p) => `'${p}'`).join(', ')} at this revision (it has ${preview(listing.map((e) => e.path))}); check the path and the revision`);
      }
      const entries = paths.map((p) => byPath.get(p)!);
      await fetchSmall([]);
      return { small: [], large: entries };
    },
    missing(dir) {
      return paths.filter((p) => !existsSync(join(dir, p)));
    },
  };
}

function preview(names: string[]): string {
  if (names.length === 0) return 'no files';
  return names.slice(0, 6).join(', ') + (names.length > 6 ? `, … (${names.length} in all)` : '');
}

// -----------------------------------------------------------------------------------------
// Public entry points

/**
 * The local directory of a model named by `nameOrPath`: the path itself when it exists (or is no
 * hub name: the caller's path checks report it), else the cache snapshot of the hub model
 * `org/name[@revision]`, downloading the files it lacks (see the file header).
 */
export async function resolveModel(nameOrPath: string, opts: HubOptions = {}): Promise<string> {
  if (existsSync(nameOrPath)) return nameOrPath;
  const name = parseHubName(nameOrPath);
  if (!name) return nameOrPath;
  return (await hubSnapshot('model', name, modelFiles(name.repo), opts)).dir;
}

/**
 * Files of a hub dataset (`repo`, exact `paths` in the repo) at `revision` (default main), from
 * the cache or downloaded: their local paths in the snapshot, in the order of `paths`.
 */
export async function hubDatasetFiles(repo: string, paths: readonly string[], revision: string | null = null, opts: HubOptions = {}): Promise<string[]> {
  const snap = await hubSnapshot('dataset', { repo, revision }, exactFiles('dataset', repo, paths), opts);
  return paths.map((p) => join(snap.dir, p));
}

/** Files of a hub model repo by exact path (like hubDatasetFiles). */
export async function hubModelFiles(repo: string, paths: readonly string[], revision: string | null = null, opts: HubOptions = {}): Promise<string[]> {
  const snap = await hubSnapshot('model', { repo, revision }, exactFiles('model', repo, paths), opts);
  return paths.map((p) => join(snap.dir, p));
}

// -----------------------------------------------------------------------------------------
// The resolution

interface Settings {
  cacheDir: string;
  endpoint: string;
  token: string | null;
  offline: boolean;
  quiet: boolean;
  flag: string | null;
}

function settingsOf(o: HubOptions): Settings {
  return {
    cacheDir: o.cacheDir ?? hubCacheDir(),
    endpoint: (o.endpoint ?? hubEndpoint()).replace(/\/+$/, ''),
    token: o.token === undefined ? hubToken() : o.token,
    offline: o.offline ?? hubOffline(),
    quiet: o.quiet ?? false,
    flag: o.flag ?? null,
  };
}

/** The commit a revision names in the cache: itself when a sha, else refs/<revision>; null when unknown. */
function cachedCommit(storage: string, revision: string): string | null {
  if (SHA_RE.test(revision)) return revision;
  try {
    const sha = readFileSync(join(storage, 'refs', revision), 'utf8').trim();
    return SHA_RE.test(sha) ? sha : null;
  } catch {
    return null;
  }
}

/** The complete cached snapshot of a revision, or why there is none. */
function cachedSnapshot(storage: string, revision: string, sel: FileSelection): { dir: string; sha: string } | { problem: string } {
  const sha = cachedCommit(storage, revision);
  if (!sha) return { problem: existsSync(storage) ? `the cache has no record of revision '${revision}' (no ${join(storage, 'refs', revision)})` : `nothing of it is in the cache (${storage})` };
  const dir = join(storage, 'snapshots', sha);
  if (!existsSync(dir)) return { problem: `the cache has no snapshot ${dir}` };
  const missing = sel.missing(dir);
  if (missing.length) return { problem: `its cached snapshot ${dir} lacks ${preview(missing)}` };
  return { dir, sha };
}

async function hubSnapshot(type: HubRepoType, name: HubName, sel: FileSelection, opts: HubOptions): Promise<HubSnapshot> {
  const s = settingsOf(opts);
  const { repo } = name;
  const revision = name.revision ?? 'main';
  const shown = formatHubName(name);
  const label = type === 'dataset' ? `dataset ${shown}` : shown;
  const storage = repoFolder(s.cacheDir, type, repo);
  const from = s.flag ? `${s.flag} ${label}` : label;

  if (s.offline) {
    const c = cachedSnapshot(storage, revision, sel);
    if ('problem' in c) {
      throw new HubError(
        repo,
        `${from}: offline mode (HF_HUB_OFFLINE=${process.env['HF_HUB_OFFLINE'] ?? '1'}) and ${c.problem}; unset HF_HUB_OFFLINE to download it from ${s.endpoint}, or fetch it once where there is network (huggingface-cli download ${repo}${type === 'dataset' ? ' --repo-type dataset' : ''}${name.revision ? ` --revision ${name.revision}` : ''}) into this cache (HF_HUB_CACHE / HF_HOME)`,
      );
    }
    opts.beforeWeights?.(c.dir);
    return { dir: c.dir, sha: c.sha, repo, type, files: [] };
  }
  // a commit sha already complete in the cache needs no request
  if (SHA_RE.test(revision)) {
    const c = cachedSnapshot(storage, revision, sel);
    if (!('problem' in c)) {
      opts.beforeWeights?.(c.dir);
      return { dir: c.dir, sha: c.sha, repo, type, files: [] };
    }
  }

  const hub = await import('@huggingface/hub');
  const tracker = new ResponseTracker();
  const common = { hubUrl: s.endpoint, fetch: tracker.fetch, ...(s.token ? { accessToken: s.token } : {}) };
  const fail = (e: unknown, what: string): never => {
    throw explainHubFailure(e, { repo, type, shown, revision, from, endpoint: s.endpoint, token: s.token, what, tracker });
  };
  if (s.token && !s.token.startsWith('hf_')) {
    throw new HubError(repo, `${from}: the access token (HF_TOKEN or the saved login) does not look like a Hugging Face token (those start with hf_); set HF_TOKEN to a token from ${s.endpoint}/settings/tokens`);
  }

  let sha: string;
  tracker.last = null;
  try {
    const info = type === 'model'
      ? await hub.modelInfo({ name: repo, revision, additionalFields: ['sha'], ...common })
      : await hub.datasetInfo({ name: repo, revision, additionalFields: ['sha'], ...common });
    sha = String((info as { sha?: unknown }).sha ?? '');
  } catch (e) {
    if (isNetworkError(e)) {
      const c = cachedSnapshot(storage, revision, sel);
      if (!('problem' in c)) {
        if (!s.quiet) process.stderr.write(`warning: cannot reach ${s.endpoint} (${networkCause(e)}); using the cached ${label} at ${c.dir}\n`);
        opts.beforeWeights?.(c.dir);
        return { dir: c.dir, sha: c.sha, repo, type, files: [] };
      }
    }
    return fail(e, 'reading its revision');
  }
  if (!SHA_RE.test(sha)) throw new HubError(repo, `${from}: ${s.endpoint} answered no commit sha for revision '${revision}' (got ${JSON.stringify(sha)})`);

  const listing: HubFileEntry[] = [];
  tracker.last = null;
  try {
    for await (const e of hub.listFiles({ repo: { type, name: repo }, revision: sha, recursive: true, ...common })) {
      if (e.type !== 'file') continue;
      listing.push({ path: e.path, size: e.size, oid: e.oid ?? '', ...(e.lfs ? { lfs: { oid: e.lfs.oid, size: e.lfs.size } } : {}) });
    }
  } catch (e) {
    return fail(e, 'listing its files');
  }

  if (revision !== sha) {
    const ref = join(storage, 'refs', revision);
    mkdirSync(dirname(ref), { recursive: true });
    writeFileSync(ref, sha);
  }
  const dir = join(storage, 'snapshots', sha);
  mkdirSync(dir, { recursive: true });
  const ctx: DownloadContext = { hub, common, repo, type, sha, storage, dir, label, from, endpoint: s.endpoint, quiet: s.quiet, fail, tracker };
  const { small, large } = await sel.select(listing, dir, (entries) => ensureFiles(ctx, entries));
  await ensureFiles(ctx, small);
  opts.beforeWeights?.(dir);
  await ensureFiles(ctx, large);
  return { dir, sha, repo, type, files: [...small, ...large].map((e) => e.path) };
}

// -----------------------------------------------------------------------------------------
// Downloads

interface DownloadContext {
  hub: typeof import('@huggingface/hub');
  common: { hubUrl: string; fetch: typeof fetch; accessToken?: string };
  repo: string;
  type: HubRepoType;
  sha: string;
  storage: string;
  dir: string;
  label: string;
  from: string;
  endpoint: string;
  quiet: boolean;
  fail: (e: unknown, what: string) => never;
  tracker: ResponseTracker;
}

function etagOf(e: HubFileEntry): string {
  return e.lfs?.oid ?? e.oid;
}

function sizeOf(e: HubFileEntry): number {
  return e.lfs?.size ?? e.size;
}

function fileSize(path: string): number | null {
  try {
    return statSync(path).size;
  } catch {
    return null;
  }
}

/** Links snapshots/<sha>/<path> to the blob (relative symlink as huggingface_hub writes; a copy where links are refused). */
function linkPointer(pointer: string, blob: string): void {
  mkdirSync(dirname(pointer), { recursive: true });
  try {
    lstatSync(pointer);
    unlinkSync(pointer); // a dangling or wrong link
  } catch {
    // none there
  }
  try {
    symlinkSync(relative(dirname(pointer), blob), pointer);
  } catch {
    copyFileSync(blob, pointer);
  }
}

/** Makes every entry present in the snapshot: linked from an existing blob, or downloaded. */
async function ensureFiles(ctx: DownloadContext, entries: HubFileEntry[]): Promise<void> {
  const todo: HubFileEntry[] = [];
  for (const e of entries) {
    const pointer = join(ctx.dir, e.path);
    if (fileSize(pointer) === sizeOf(e)) continue;
    const etag = etagOf(e);
    if (!/^[0-9a-f]{40}([0-9a-f]{24})?$/.test(etag)) throw new HubError(ctx.repo, `${ctx.from}: the hub lists ${e.path} without a usable id (${JSON.stringify(etag)})`);
    const blob = join(ctx.storage, 'blobs', etag);
    if (fileSize(blob) === sizeOf(e)) {
      linkPointer(pointer, blob);
      continue;
    }
    todo.push(e);
  }
  if (todo.length === 0) return;
  const total = todo.reduce((a, e) => a + sizeOf(e), 0);
  const bar = downloadProgress(ctx, todo.length, total);
  try {
    for (const e of todo) {
      const blob = join(ctx.storage, 'blobs', etagOf(e));
      const release = await lockBlob(ctx, e, blob);
      try {
        // another run may have finished it while this one waited
        if (fileSize(blob) !== sizeOf(e)) await downloadBlob(ctx, e, blob, bar);
        else bar.add(sizeOf(e));
      } finally {
        release();
      }
      linkPointer(join(ctx.dir, e.path), blob);
    }
  } finally {
    bar.stop();
  }
}

/** How often a run waiting for another's download of the same file looks again. */
const LOCK_POLL_MS = 250;

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * One download of a blob at a time among eqat runs sharing the cache: `<blob>.lock` created
 * exclusively, holding the pid and host. A run that finds it waits while its owner (on this host)
 * is alive, and takes it over when the owner is gone. Returns the release.
 */
async function lockBlob(ctx: DownloadContext, e: HubFileEntry, blob: string): Promise<() => void> {
  const lock = `${blob}.lock`;
  mkdirSync(dirname(blob), { recursive: true });
  let noted = false;
  for (;;) {
    try {
      const fd = openSync(lock, 'wx');
      writeSync(fd, `${process.pid} ${hostname()}\n`);
      closeSync(fd);
      return () => rmSync(lock, { force: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EEXIST') throw err;
    }
    let owner = '';
    try {
      owner = readFileSync(lock, 'utf8');
    } catch {
      continue; // released meanwhile
    }
    const [pidText, host] = owner.trim().split(' ');
    const pid = Number(pidText);
    const alive = Number.isSafeInteger(pid) && pid > 0 && (host !== hostname() || pidAlive(pid));
    if (!alive) {
      rmSync(lock, { force: true }); // its owner is gone: take it over
      continue;
    }
    if (!noted && !ctx.quiet) {
      process.stderr.write(`waiting for another eqat run (pid ${pid}${host !== hostname() ? ` on ${host}` : ''}) downloading ${e.path} of ${ctx.label} (${lock})\n`);
      noted = true;
    }
    await new Promise((ok) => setTimeout(ok, LOCK_POLL_MS));
  }
}

interface ByteProgress {
  file(name: string): void;
  add(bytes: number): void;
  stop(): void;
}

function mib(n: number): string {
  return (n / 2 ** 20).toFixed(1);
}

function downloadProgress(ctx: DownloadContext, files: number, total: number): ByteProgress {
  if (ctx.quiet || !stderrIsInteractive()) {
    if (!ctx.quiet) process.stderr.write(`downloading ${files} file${files === 1 ? '' : 's'} (${mib(total)} MiB) of ${ctx.label} from ${ctx.endpoint} into ${ctx.dir}\n`);
    return { file() {}, add() {}, stop() {} };
  }
  const bar = new cliProgress.SingleBar(
    {
      format: `download {file} [{bar}] {percentage}% {done}/{all} MiB | {speed} MiB/s | ETA {eta_formatted}`,
      stream: process.stderr,
      hideCursor: true,
      clearOnComplete: false,
      etaBuffer: 64,
    },
    cliProgress.Presets.shades_classic,
  );
  const t0 = Date.now();
  let done = 0;
  let name = '';
  const payload = () => ({ file: name, done: mib(done), all: mib(total), speed: mib(done / Math.max((Date.now() - t0) / 1000, 1e-3)) });
  bar.start(Math.max(total, 1), 0, payload());
  return {
    file(n) {
      name = n;
      bar.update(done, payload());
    },
    add(b) {
      done += b;
      bar.update(done, payload());
    },
    stop() {
      bar.stop();
    },
  };
}

/**
 * Downloads one file into `blob` through `blob.incomplete`: resumed from its length (a range
 * request) when an earlier run was cut off, hashed as it goes, verified against the hub's sha256
 * (LFS) or git blob sha1, then renamed into place.
 */
async function downloadBlob(ctx: DownloadContext, e: HubFileEntry, blob: string, bar: ByteProgress): Promise<void> {
  const size = sizeOf(e);
  const incomplete = `${blob}.incomplete`;
  mkdirSync(dirname(blob), { recursive: true });
  bar.file(e.path);
  // the hashes of what is there already
  const sha256 = createHash('sha256');
  const sha1 = createHash('sha1');
  if (!e.lfs) sha1.update(`blob ${size}\0`);
  let have = fileSize(incomplete) ?? 0;
  if (have > size) {
    rmSync(incomplete, { force: true });
    have = 0;
  }
  if (have > 0) {
    const fd = openSync(incomplete, 'r');
    try {
      const buf = Buffer.allocUnsafe(8 * 2 ** 20);
      for (let pos = 0; pos < have; ) {
        const n = readSync(fd, buf, 0, Math.min(buf.length, have - pos), pos);
        if (n <= 0) break;
        const chunk = buf.subarray(0, n);
        sha256.update(chunk);
        sha1.update(chunk);
        pos += n;
      }
    } finally {
      closeSync(fd);
    }
    bar.add(have);
  }
  if (have < size) {
    let body: Blob | null;
    ctx.tracker.last = null;
    try {
      body = await ctx.hub.downloadFile({ repo: { type: ctx.type, name: ctx.repo }, path: e.path, revision: ctx.sha, xet: false, ...ctx.common });
    } catch (err) {
      return ctx.fail(err, `downloading ${e.path}`);
    }
    if (!body) throw new HubError(ctx.repo, `${ctx.from}: ${ctx.endpoint} lists ${e.path} but does not serve it (404); try again later`);
    if (body.size !== size) {
      throw new HubError(ctx.repo, `${ctx.from}: ${e.path} is ${body.size} bytes on ${ctx.endpoint} but listed as ${size}; try again later`);
    }
    const fd = openSync(incomplete, 'a');
    try {
      if (fstatSync(fd).size !== have) throw new HubError(ctx.repo, `${incomplete}: changed while this run read it; is another download of ${ctx.label} running?`);
      const reader = (have > 0 ? body.slice(have) : body).stream().getReader();
      for (;;) {
        let r: ReadableStreamReadResult<Uint8Array>;
        try {
          r = await reader.read();
        } catch (err) {
          throw interrupted(ctx, e, have, size, err);
        }
        if (r.done) break;
        const chunk = r.value;
        if (have + chunk.length > size) throw new HubError(ctx.repo, `${ctx.from}: ${ctx.endpoint} sent more than the ${size} bytes of ${e.path}; try again`);
        writeAll(fd, chunk);
        sha256.update(chunk);
        sha1.update(chunk);
        have += chunk.length;
        bar.add(chunk.length);
      }
    } finally {
      closeSync(fd);
    }
    if (have < size) throw interrupted(ctx, e, have, size, null);
  }
  // verification: the LFS sha256, or the git blob id of a small file
  const [want, got, algo] = e.lfs ? [e.lfs.oid, sha256.digest('hex'), 'sha256'] : [e.oid, sha1.digest('hex'), 'git blob sha1'];
  if (got !== want) {
    rmSync(incomplete, { force: true });
    throw new HubError(
      ctx.repo,
      `${ctx.from}: ${e.path} downloaded from ${ctx.endpoint} does not match the hub's ${algo} (expected ${want}, got ${got}); the download was deleted: run the command again, and if it fails the same way check for a proxy that alters downloads`,
    );
  }
  renameSync(incomplete, blob);
}

function writeAll(fd: number, chunk: Uint8Array): void {
  for (let off = 0; off < chunk.length; ) off += writeSync(fd, chunk, off, chunk.length - off);
}

function interrupted(ctx: DownloadContext, e: HubFileEntry, have: number, size: number, err: unknown): HubError {
  const why = err === null ? 'the connection closed early' : networkCause(err);
  return new HubError(
    ctx.repo,
    `${ctx.from}: the download of ${e.path} stopped at ${have} of ${size} bytes (${why}); run the command again to resume it (kept in ${join(ctx.storage, 'blobs', etagOf(e))}.incomplete)`,
  );
}

// -----------------------------------------------------------------------------------------
// Errors

/** Remembers the last failed response's status and hub error code (X-Error-Code), which HubApiError drops. */
class ResponseTracker {
  last: { status: number; code: string | null; message: string | null; url: string } | null = null;
  readonly fetch: typeof fetch = async (input, init) => {
    const resp = await fetch(input, init);
    if (!resp.ok) {
      this.last = { status: resp.status, code: resp.headers.get('x-error-code'), message: resp.headers.get('x-error-message'), url: String(input instanceof Request ? input.url : input) };
    }
    return resp;
  };
}

function isNetworkError(e: unknown): boolean {
  if (!(e instanceof Error)) return false;
  if (e.name === 'HubApiError' || e instanceof HubError) return false;
  return e instanceof TypeError || 'cause' in e || /fetch failed|ECONN|ENOTFOUND|EAI_AGAIN|socket|terminated|network/i.test(e.message);
}

function networkCause(e: unknown): string {
  if (typeof e === 'string') return e;
  if (!(e instanceof Error)) return String(e);
  const cause = (e as { cause?: unknown }).cause;
  if (cause instanceof Error) {
    const code = (cause as NodeJS.ErrnoException).code;
    return code ? `${code}: ${cause.message}` : cause.message;
  }
  return e.message;
}

interface FailureContext {
  repo: string;
  type: HubRepoType;
  shown: string;
  revision: string;
  from: string;
  endpoint: string;
  token: string | null;
  what: string;
  tracker: ResponseTracker;
}

/** The HubError for a failed hub request: gated, not found (repo or revision), refused token, no network. */
function explainHubFailure(e: unknown, c: FailureContext): HubError {
  if (e instanceof HubError) return e;
  const kind = c.type === 'dataset' ? 'dataset' : 'model';
  const page = `${c.endpoint}/${c.type === 'dataset' ? 'datasets/' : ''}${c.repo}`;
  const status = (e as { statusCode?: number }).statusCode ?? c.tracker.last?.status;
  const code = c.tracker.last?.code ?? null;
  const detail = e instanceof Error ? e.message.replace(/\. URL: .*$/, '') : String(e);
  if (status === undefined) {
    if (isNetworkError(e) || typeof e === 'string') {
      return new HubError(
        c.repo,
        `${c.from}: cannot reach ${c.endpoint} while ${c.what} (${networkCause(e)}); check the network connection, a proxy (HTTPS_PROXY) or HF_ENDPOINT, or work from the cache with HF_HUB_OFFLINE=1 once the ${kind} is there`,
      );
    }
    return new HubError(c.repo, `${c.from}: ${c.what} failed: ${detail}`);
  }
  if (code === 'GatedRepo' || (code === null && /\bgated\b|restricted/i.test(detail))) {
    return new HubError(
      c.repo,
      `${c.from}: ${c.repo} is a gated ${kind}: ${c.token ? 'the token in HF_TOKEN has no access to it yet' : 'it needs an access token'}; accept its conditions at ${page} with your account, then set HF_TOKEN to a read token of that account (${c.endpoint}/settings/tokens)`,
    );
  }
  if (code === 'RevisionNotFound' || (status === 404 && /revision/i.test(detail))) {
    return new HubError(c.repo, `${c.from}: ${c.repo} has no revision '${c.revision}' (branch, tag or commit); check its spelling (the ${kind}'s revisions are listed at ${page}/tree/main)`);
  }
  if (code === 'RepoNotFound' || status === 404 || (status === 401 && !c.token)) {
    return new HubError(
      c.repo,
      `${c.from}: no ${kind} ${c.repo} on ${c.endpoint}${status === 401 ? ' (or it is private)' : ''}, and no local path of that name exists; check the spelling of the repo id (org/name, as in ${c.endpoint}/${c.type === 'dataset' ? 'datasets/' : ''}org/name)${c.token ? '' : '; a private repo needs HF_TOKEN'}`,
    );
  }
  if (status === 401) {
    return new HubError(c.repo, `${c.from}: ${c.endpoint} refused the access token for ${c.repo} (401: ${detail}); set HF_TOKEN to a valid read token (${c.endpoint}/settings/tokens)`);
  }
  if (status === 403) {
    return new HubError(c.repo, `${c.from}: ${c.endpoint} denies access to ${c.repo} (403: ${detail}); check that the token in HF_TOKEN may read it (fine-grained tokens need read access to this repo)`);
  }
  if (status === 429) return new HubError(c.repo, `${c.from}: ${c.endpoint} is rate-limiting requests (429) while ${c.what}; wait a while and run again${c.token ? '' : ', or set HF_TOKEN'}`);
  return new HubError(c.repo, `${c.from}: ${c.endpoint} answered ${status} while ${c.what} (${detail}); try again later`);
}
