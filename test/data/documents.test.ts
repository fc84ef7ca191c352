// Corpus readers: .txt blank-line splitting (LF, CRLF, CR, whitespace-only separators), .jsonl
// and .parquet (snappy and gzip fixtures under test/fixtures/), and every error message.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseTxt, readDocuments } from '../../src/data/documents.js';

// Compiled to dist/test/data/; the fixtures stay in the source tree.
const FIXTURES = fileURLToPath(new URL('../../../test/fixtures/', import.meta.url));

const dir = mkdtempSync(join(tmpdir(), 'eqat-docs-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

function put(name: string, content: string | Uint8Array): string {
  const p = join(dir, name);
  writeFileSync(p, content);
  return p;
}

async function rejects(path: string, pattern: RegExp): Promise<void> {
  await assert.rejects(readDocuments(path), (e: Error) => {
    assert.match(e.message, pattern);
    assert.ok(e.message.includes(path), `message names the file: ${e.message}`);
    return true;
  });
}

test('txt: documents split at runs of blank lines in every line-ending style', async () => {
  const text =
    '\n\n  \nalpha one\n  alpha two (indented)\n\nbeta\n \t \n\n' + // LF, whitespace-only run, leading blanks
    'gamma one\r\ngamma two\r\n\r\ndelta\r\n  \r\n' + // CRLF, whitespace-only CRLF line
    'epsilon\rzeta one\r\rzeta two\n\n\n'; // lone CR line endings, trailing blanks
  const docs = await readDocuments(put('mixed.txt', text));
  assert.deepEqual(docs, [
    'alpha one\n  alpha two (indented)',
    'beta',
    'gamma one\ngamma two',
    'delta',
    'epsilon\nzeta one',
    'zeta two',
  ]);
});

test('txt: byte-order mark dropped, single document without trailing newline, upper-case extension', async () => {
  assert.deepEqual(await readDocuments(put('bom.TXT', '\uFEFFonly doc\nsecond line')), ['only doc\nsecond line']);
  assert.deepEqual(parseTxt('a\n\t\nb'), ['a', 'b']);
  assert.deepEqual(parseTxt('a\nb'), ['a\nb']);
});

test('jsonl: text fields in order, blank lines skipped, extra fields ignored, text verbatim', async () => {
  const lines = [
    JSON.stringify({ text: 'first\n\nwith a blank line inside', id: 1 }),
    '',
    '   ',
    JSON.stringify({ meta: { x: 1 }, text: 'second café 🙂' }) + '\r',
    JSON.stringify({ text: '   ' }), // whitespace-only document: dropped
    JSON.stringify({ text: ' third ' }),
  ];
  const docs = await readDocuments(put('ok.jsonl', lines.join('\n') + '\n'));
  assert.deepEqual(docs, ['first\n\nwith a blank line inside', 'second café 🙂', ' third ']);
});

test('jsonl: invalid JSON, missing text, non-string text and non-object lines name the line', async () => {
  const good = JSON.stringify({ text: 'ok' });
  await rejects(put('bad1.jsonl', [good, '', '{"text": "unterminated'].join('\n')), /: line 3: invalid JSON \(/);
  await rejects(put('bad2.jsonl', [good, JSON.stringify({ body: 'x' })].join('\n')), /: line 2: missing "text" field$/);
  await rejects(
    put('bad3.jsonl', [good, good, '', JSON.stringify({ text: 42 })].join('\n')),
    /: line 4: "text" field is not a string \(got number\)$/,
  );
  await rejects(put('bad4.jsonl', JSON.stringify({ text: null })), /: line 1: "text" field is not a string \(got null\)$/);
  await rejects(put('bad5.jsonl', [good, '["text"]'].join('\n')), /: line 2: expected a JSON object with a string "text" field$/);
  await rejects(put('bad6.jsonl', [good, '"just a string"'].join('\n')), /: line 2: expected a JSON object/);
});

const PARQUET_DOCS = [
  'First document.\nIt has two lines.',
  'Second: unicode café – 日本語 🙂',
  'Fourth, after a whitespace-only row and a null row.',
  'Fifth\r\nwith CRLF kept verbatim.',
];

test('parquet: text column read across row groups (snappy), null and blank rows skipped', async () => {
  assert.deepEqual(await readDocuments(join(FIXTURES, 'docs-snappy.parquet')), PARQUET_DOCS);
});

test('parquet: gzip-compressed file read through the extra codecs', async () => {
  assert.deepEqual(await readDocuments(join(FIXTURES, 'docs-gzip.parquet')), PARQUET_DOCS);
});

test('parquet: missing text column, non-string text, unreadable and truncated files', async () => {
  const noText = join(FIXTURES, 'no-text-column.parquet');
  await rejects(noText, /: parquet file has no "text" column \(columns: content, id\)$/);
  await rejects(
    join(FIXTURES, 'int-text-column.parquet'),
    /: row 0: "text" column value is not a string \(got number\)$/,
  );
  await rejects(put('garbage.parquet', 'this is not a parquet file at all'), /: unreadable parquet file \(/);
  const whole = new Uint8Array(readFileSync(join(FIXTURES, 'docs-snappy.parquet')));
  await rejects(put('truncated.parquet', whole.subarray(0, whole.length >> 1)), /: unreadable parquet file \(/);
  await rejects(put('empty.parquet', ''), /: unreadable parquet file \(/);
  await rejects(join(FIXTURES, 'all-blank.parquet'), /: empty corpus \(no non-blank documents found\)$/);
});

test('missing file, unsupported extension, directory and empty corpora', async () => {
  await rejects(join(dir, 'nope.txt'), /^readDocuments: .*nope\.txt: file not found$/);
  await rejects(join(dir, 'nope.parquet'), /: file not found$/);
  await rejects(
    put('data.csv', 'a,b\n'),
    /: unsupported corpus format \(extension "\.csv"\); supported: \.txt, \.jsonl, \.parquet$/,
  );
  await rejects(put('README', 'text'), /: unsupported corpus format \(no extension\); supported: \.txt, \.jsonl, \.parquet$/);
  await rejects(put('data.json', '{"text": "x"}'), /unsupported corpus format \(extension "\.json"\)/);
  const sub = join(dir, 'folder.txt');
  mkdirSync(sub);
  await rejects(sub, /: not a regular file$/);
  await rejects(put('empty.txt', ''), /: empty corpus \(no non-blank documents found\)$/);
  await rejects(put('blank.txt', '\n \r\n\t\n'), /: empty corpus/);
  await rejects(put('empty.jsonl', '\n\n'), /: empty corpus/);
  await rejects(put('blanktext.jsonl', '{"text": ""}\n{"text": " \\n "}\n'), /: empty corpus/);
});
