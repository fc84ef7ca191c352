// The token cache (src/data/token-cache.ts) never trains on a damaged entry: flipped bytes and a
// file cut short are found by the entry's checksum and length, rebuilt with a note, and the
// rebuilt entry serves the next run silently.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cachedTokenStream } from '../../src/data/token-cache.js';
import { loadTokenizer } from '../../src/io/tokenizer.js';
import { REPO, TINY } from '../golden.js';

const cache = mkdtempSync(join(tmpdir(), 'eqat-token-cache-'));
process.env['EQAT_CACHE_DIR'] = cache;
// a small corpus (its first documents) keeps each rebuild short
const CALIB = join(cache, 'calib.txt');
writeFileSync(CALIB, readFileSync(join(REPO, 'fixtures', 'text', 'calib-sample.txt'), 'utf8').split('\n\n').slice(0, 12).join('\n\n'));
test.after(() => rmSync(cache, { recursive: true, force: true }));

test('a damaged token-cache entry (flipped bytes, cut short) is rebuilt with a note', async () => {
  const tok = loadTokenizer(TINY);
  const notes: string[] = [];
  const note = (m: string): void => void notes.push(m);
  const first = await cachedTokenStream(CALIB, TINY, tok, note);
  assert.deepEqual(notes, [], 'a miss builds the entry without a note');
  const [name] = readdirSync(join(cache, 'tokens')).filter((f) => f.endsWith('.bin'));
  const entry = join(cache, 'tokens', name!);
  const good = readFileSync(entry);
  const damages: [string, Buffer, RegExp][] = [
    ['a flipped byte in the stream', Buffer.from(good).fill(0x7f, good.length - 9, good.length - 8), /checksum mismatch/],
    ['a flipped byte in the counts', (() => { const b = Buffer.from(good); b[b.length - 4 * first.tokens.stream.length - 1]! ^= 1; return b; })(), /bytes where its header says|checksum mismatch/],
    ['cut short', good.subarray(0, good.length - 4), /bytes where its header says/],
    ['cut inside the header', good.subarray(0, 20), /cut short/],
  ];
  for (const [what, bytes, why] of damages) {
    assert.ok(!bytes.equals(good), what);
    writeFileSync(entry, bytes);
    notes.length = 0;
    const again = await cachedTokenStream(CALIB, TINY, tok, note);
    assert.equal(notes.length, 1, `${what}: one note`);
    assert.match(notes[0]!, new RegExp(`^token cache entry ${entry.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is damaged \\(`));
    assert.match(notes[0]!, why, what);
    assert.match(notes[0]!, /; rebuilding it$/);
    assert.deepEqual(again.tokens.stream, first.tokens.stream, `${what}: the rebuilt stream`);
    assert.deepEqual(again.tokens.docStarts, first.tokens.docStarts);
    assert.ok(readFileSync(entry).equals(good), `${what}: the entry is rewritten`);
    notes.length = 0;
    await cachedTokenStream(CALIB, TINY, tok, note);
    assert.deepEqual(notes, [], `${what}: the rebuilt entry is a silent hit`);
  }
  assert.equal(first.identity.bytes, readFileSync(CALIB).length);
});
