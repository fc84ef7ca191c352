// A Hugging Face hub on 127.0.0.1 for the tests (Node's http module), serving the endpoints
// @huggingface/hub calls, so that HF_ENDPOINT pointed at it exercises eqat's hub names without
// the internet:
//   GET /api/{models|datasets}/{org}/{name}/revision/{rev}   repo info with the commit sha
//   GET /api/{models|datasets}/{org}/{name}/tree/{sha}?...   the file list (oid, size, lfs)
//   GET /{org}/{name}/resolve/{rev}/{path}                   file bytes (Range honoured, ETag)
//   GET /datasets/{org}/{name}/resolve/{rev}/{path}
// with the hub's error answers: 401/404 + X-Error-Code RepoNotFound, 404 RevisionNotFound,
// 404 EntryNotFound, 401/403 GatedRepo. Knobs for faults: a file served with other bytes than
// listed (checksum mismatch) and a file whose next download is cut after N bytes.
import { createHash } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface FakeCommit {
  sha: string;
  files: Record<string, Buffer>;
}

export interface FakeRepo {
  type: 'model' | 'dataset';
  id: string;
  /** branch or tag -> commit sha */
  refs: Record<string, string>;
  commits: FakeCommit[];
  /** Needs a token that `tokens` lists (401/403 GatedRepo otherwise). */
  gated?: boolean;
}

export interface RequestRecord {
  method: string;
  url: string;
  range: string | null;
  auth: string | null;
}

/** A 40-hex commit sha derived from a label. */
export function fakeSha(label: string): string {
  return createHash('sha1').update(label).digest('hex');
}

const sha1Memo = new WeakMap<Buffer, string>();
const sha256Memo = new WeakMap<Buffer, string>();

export function gitBlobSha1(bytes: Buffer): string {
  let h = sha1Memo.get(bytes);
  if (h === undefined) sha1Memo.set(bytes, (h = createHash('sha1').update(`blob ${bytes.length}\0`).update(bytes).digest('hex')));
  return h;
}

export function sha256(bytes: Buffer): string {
  let h = sha256Memo.get(bytes);
  if (h === undefined) sha256Memo.set(bytes, (h = createHash('sha256').update(bytes).digest('hex')));
  return h;
}

/** Files stored with LFS on the fake hub (as on the real one: weights and data files). */
function isLfs(path: string): boolean {
  return /\.(safetensors|parquet|gz|bin)$/.test(path) || path.endsWith('.jsonl');
}

export class FakeHub {
  readonly repos: FakeRepo[] = [];
  readonly log: RequestRecord[] = [];
  /** Tokens with access to gated repos. */
  tokens = new Set<string>(['hf_good']);
  /** path -> bytes served instead of the listed ones */
  corrupt = new Map<string, Buffer>();
  /** path -> bytes after which the next download of it is cut (once) */
  cutAfter = new Map<string, number>();
  private server: Server | null = null;
  endpoint = '';

  add(repo: FakeRepo): FakeRepo {
    this.repos.push(repo);
    return repo;
  }

  async start(): Promise<string> {
    this.server = createServer((req, res) => {
      this.handle(req, res).catch((e) => {
        res.statusCode = 500;
        res.end(String(e));
      });
    });
    await new Promise<void>((ok) => this.server!.listen(0, '127.0.0.1', ok));
    this.endpoint = `http://127.0.0.1:${(this.server!.address() as AddressInfo).port}`;
    return this.endpoint;
  }

  async stop(): Promise<void> {
    if (!this.server) return;
    this.server.closeAllConnections();
    await new Promise<void>((ok) => this.server!.close(() => ok()));
    this.server = null;
  }

  /** Requests that fetched file bytes (not the 0-0 probe) of `path`. */
  downloads(path: string): RequestRecord[] {
    return this.log.filter((r) => r.url.includes('/resolve/') && r.url.split('?')[0]!.endsWith('/' + path) && r.range !== 'bytes=0-0');
  }

  private find(type: string, id: string): FakeRepo | undefined {
    return this.repos.find((r) => r.type === type && r.id === id);
  }

  private commitOf(repo: FakeRepo, rev: string): FakeCommit | undefined {
    const sha = repo.refs[rev] ?? rev;
    return repo.commits.find((c) => c.sha === sha);
  }

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const url = new URL(req.url!, 'http://x');
    const auth = req.headers['authorization'] ?? null;
    this.log.push({ method: req.method!, url: req.url!, range: (req.headers['range'] as string | undefined) ?? null, auth });
    const token = auth?.startsWith('Bearer ') ? auth.slice(7) : null;
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    const error = (status: number, code: string | null, message: string) => {
      res.statusCode = status;
      if (code) res.setHeader('X-Error-Code', code);
      res.setHeader('X-Error-Message', message);
      res.setHeader('Content-Type', 'application/json');
      res.end(JSON.stringify({ error: message }));
    };
    const repoOr = (type: string, id: string): FakeRepo | null => {
      const repo = this.find(type, id);
      if (!repo) {
        // the hub answers 401 without a token (the repo might be private), 404 with one
        if (token) error(404, 'RepoNotFound', 'Repository not found');
        else error(401, 'RepoNotFound', 'Repository Not Found for url: ' + req.url + '. Please make sure you specified the correct `repo_id` and `repo_type`. If you are trying to access a private or gated repo, make sure you are authenticated.');
        return null;
      }
      return repo;
    };

    if (parts[0] === 'api' && (parts[1] === 'models' || parts[1] === 'datasets')) {
      const type = parts[1] === 'models' ? 'model' : 'dataset';
      const id = `${parts[2]}/${parts[3]}`;
      const repo = repoOr(type, id);
      if (!repo) return;
      const rev = parts.slice(5).join('/');
      const commit = this.commitOf(repo, rev === 'HEAD' ? 'main' : rev);
      if (!commit) return error(404, 'RevisionNotFound', `Invalid rev id: ${rev}`);
      res.setHeader('Content-Type', 'application/json');
      if (parts[4] === 'revision') {
        res.end(JSON.stringify({ _id: fakeSha(id).slice(0, 24), id, sha: commit.sha, private: false, gated: repo.gated ? 'manual' : false, downloads: 0, likes: 0, lastModified: '2024-01-01T00:00:00.000Z', siblings: Object.keys(commit.files).map((rfilename) => ({ rfilename })) }));
        return;
      }
      if (parts[4] === 'tree') {
        const entries: object[] = [];
        const dirs = new Set<string>();
        for (const [path, bytes] of Object.entries(commit.files).sort()) {
          const segs = path.split('/');
          for (let i = 1; i < segs.length; i++) dirs.add(segs.slice(0, i).join('/'));
          if (isLfs(path)) {
            const pointer = Buffer.from(`version https://git-lfs.github.com/spec/v1\noid sha256:${sha256(bytes)}\nsize ${bytes.length}\n`);
            entries.push({ type: 'file', oid: gitBlobSha1(pointer), size: bytes.length, path, lfs: { oid: sha256(bytes), size: bytes.length, pointerSize: pointer.length } });
          } else {
            entries.push({ type: 'file', oid: gitBlobSha1(bytes), size: bytes.length, path });
          }
        }
        for (const d of dirs) entries.push({ type: 'directory', oid: fakeSha(d), size: 0, path: d });
        res.end(JSON.stringify(entries));
        return;
      }
      return error(404, null, 'unknown api');
    }

    // file downloads
    const type = parts[0] === 'datasets' ? 'dataset' : 'model';
    const p = type === 'dataset' ? parts.slice(1) : parts;
    if (p[2] !== 'resolve') return error(404, null, 'unknown route');
    const id = `${p[0]}/${p[1]}`;
    const repo = repoOr(type, id);
    if (!repo) return;
    if (repo.gated && !(token && this.tokens.has(token))) {
      return error(token ? 403 : 401, 'GatedRepo', `Access to model ${id} is restricted. You must have access to it and be authenticated to access it. Please log in.`);
    }
    const commit = this.commitOf(repo, p[3]!);
    if (!commit) return error(404, 'RevisionNotFound', `Invalid rev id: ${p[3]}`);
    const path = p.slice(4).join('/');
    const listed = commit.files[path];
    if (!listed) return error(404, 'EntryNotFound', `Entry not found: ${path}`);
    const bytes = this.corrupt.get(path) ?? listed;
    const etag = isLfs(path) ? sha256(listed) : gitBlobSha1(listed);
    res.setHeader('ETag', `"${etag}"`);
    res.setHeader('X-Repo-Commit', commit.sha);
    res.setHeader('Accept-Ranges', 'bytes');
    res.setHeader('Content-Type', 'application/octet-stream');
    const range = /^bytes=(\d+)-(\d*)$/.exec((req.headers['range'] as string | undefined) ?? '');
    let start = 0;
    let end = bytes.length - 1;
    if (range) {
      start = Number(range[1]);
      if (range[2]) end = Math.min(Number(range[2]), bytes.length - 1);
      if (start > end) {
        res.statusCode = 416;
        res.setHeader('Content-Range', `bytes */${bytes.length}`);
        res.end();
        return;
      }
      res.statusCode = 206;
      res.setHeader('Content-Range', `bytes ${start}-${end}/${bytes.length}`);
    }
    const body = bytes.subarray(start, end + 1);
    res.setHeader('Content-Length', body.length);
    const cut = this.cutAfter.get(path);
    if (cut !== undefined && !(range && start === 0 && end === 0)) {
      this.cutAfter.delete(path);
      res.flushHeaders();
      res.write(body.subarray(0, cut), () => setTimeout(() => res.socket?.destroy(), 20));
      return;
    }
    res.end(body);
  }
}
