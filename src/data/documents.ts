// Corpus readers for calibration / training data: turn a user's text file (.txt), JSON lines
// (.jsonl, `text` field) or parquet table (.parquet, `text` column) into a list of documents.
//
// Formats:
//   .txt      documents are separated by one or more blank lines (empty or whitespace-only);
//             line endings \r\n, \n and \r are accepted and a document's lines are joined by \n.
//             A leading UTF-8 byte-order mark is dropped.
//   .jsonl    one JSON object per line with a string `text` field; blank lines are skipped; the
//             text is kept verbatim.
//   .parquet  the `text` column (strings; null rows are skipped), read with hyparquet, every
//             parquet codec supported through hyparquet-compressors.
// In every format a document that is empty or whitespace-only is dropped: it carries no text to
// calibrate on, and the .txt format cannot even express one. A corpus with no documents left is
// an error. Every error message starts with the file path and names the problem.
//
// Text that is not text: characters that are U+FFFD (what invalid UTF-8 decodes to) or control
// characters other than tab, line feed, vertical tab, form feed and carriage return (NUL,
// DEL, C1 controls) are counted over the whole file (parquet: over its documents). Above
// NON_TEXT_REFUSE (1%) the file is refused, naming the share and the first such character;
// above NON_TEXT_WARN (0.1%) a warning goes to stderr. A binary file or text in another encoding
// than UTF-8 would otherwise be tokenized into garbage windows without a word.
import { existsSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { extname } from 'node:path';
import { parquetMetadata, parquetReadObjects, parquetSchema } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';

/** File extensions readDocuments understands, lower-case, with the dot. */
export const SUPPORTED_CORPUS_EXTENSIONS = ['.txt', '.jsonl', '.parquet'] as const;

/** Above this share of non-text characters (see the file header) a corpus is refused. */
export const NON_TEXT_REFUSE = 0.01;
/** Above this share a corpus is read with a warning on stderr. */
export const NON_TEXT_WARN = 0.001;

function isNonText(c: number): boolean {
  return c === 0xfffd || (c < 0x20 && (c < 0x09 || c > 0x0d)) || (c >= 0x7f && c <= 0x9f);
}

/**
 * Refuses (above NON_TEXT_REFUSE) or warns about (above NON_TEXT_WARN) `text` read from `path`
 * when too many of its characters are not text: U+FFFD or control characters.
 */
export function checkText(path: string, text: string): void {
  let bad = 0;
  let first = -1;
  for (let i = 0; i < text.length; i++) {
    if (isNonText(text.charCodeAt(i))) {
      if (first < 0) first = i;
      bad++;
    }
  }
  const share = text.length ? bad / text.length : 0;
  if (share <= NON_TEXT_WARN) return;
  const code = text.charCodeAt(first);
  const line = text.slice(0, first).split('\n').length;
  const what =
    `${(share * 100).toFixed(2)}% of its ${text.length} characters are not text (U+FFFD from invalid UTF-8, or control characters; ` +
    `the first, U+${code.toString(16).toUpperCase().padStart(4, '0')}, on line ${line})`;
  if (share > NON_TEXT_REFUSE) {
    throw new Error(
      `${path}: ${what}, above the ${NON_TEXT_REFUSE * 100}% eqat accepts; is it a binary file, or text in another encoding? Convert it to UTF-8 text`,
    );
  }
  process.stderr.write(`warning: ${path}: ${what}, above ${NON_TEXT_WARN * 100}%; check that it is UTF-8 text\n`);
}

/** Reads a corpus file into documents (see the file header for the formats). */
export async function readDocuments(path: string): Promise<string[]> {
  const ext = extname(path).toLowerCase();
  if (!(SUPPORTED_CORPUS_EXTENSIONS as readonly string[]).includes(ext)) {
    const got = ext === '' ? 'no extension' : `extension "${extname(path)}"`;
    throw new Error(
      `readDocuments: ${path}: unsupported corpus format (${got}); supported: ${SUPPORTED_CORPUS_EXTENSIONS.join(', ')}`,
    );
  }
  if (!existsSync(path)) throw new Error(`readDocuments: ${path}: file not found`);
  if (!statSync(path).isFile()) throw new Error(`readDocuments: ${path}: not a regular file`);

  let docs: string[];
  if (ext === '.parquet') {
    docs = await parseParquet(path, await readFile(path));
    checkText(path, docs.join('\n\n'));
  } else {
    const text = await readFile(path, 'utf8');
    checkText(path, text);
    docs = ext === '.txt' ? parseTxt(text) : parseJsonl(path, text);
  }
  if (docs.length === 0) {
    throw new Error(`readDocuments: ${path}: empty corpus (no non-blank documents found)`);
  }
  return docs;
}

const BLANK = /^\s*$/;

/** Splits plain text into documents at runs of blank lines. */
export function parseTxt(text: string): string[] {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const docs: string[] = [];
  let current: string[] = [];
  for (const line of text.split(/\r\n|\n|\r/)) {
    if (BLANK.test(line)) {
      if (current.length > 0) docs.push(current.join('\n'));
      current = [];
    } else {
      current.push(line);
    }
  }
  if (current.length > 0) docs.push(current.join('\n'));
  return docs;
}

/** Parses JSON lines; `path` is only used in error messages. */
export function parseJsonl(path: string, text: string): string[] {
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  const docs: string[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i]!;
    if (BLANK.test(line)) continue;
    const lineNo = i + 1;
    let value: unknown;
    try {
      value = JSON.parse(line);
    } catch (e) {
      throw new Error(`readDocuments: ${path}: line ${lineNo}: invalid JSON (${(e as Error).message})`);
    }
    if (value === null || typeof value !== 'object' || Array.isArray(value)) {
      throw new Error(`readDocuments: ${path}: line ${lineNo}: expected a JSON object with a string "text" field`);
    }
    const t = (value as Record<string, unknown>)['text'];
    if (t === undefined) throw new Error(`readDocuments: ${path}: line ${lineNo}: missing "text" field`);
    if (typeof t !== 'string') {
      throw new Error(`readDocuments: ${path}: line ${lineNo}: "text" field is not a string (got ${describe(t)})`);
    }
    if (!BLANK.test(t)) docs.push(t);
  }
  return docs;
}

async function parseParquet(path: string, bytes: Buffer): Promise<string[]> {
  // hyparquet reads from an ArrayBuffer; copy the exact byte range out of the (possibly pooled) Buffer.
  const file = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
  let columns: string[];
  try {
    const metadata = parquetMetadata(file);
    columns = parquetSchema(metadata).children.map((c) => c.element.name);
  } catch (e) {
    throw new Error(`readDocuments: ${path}: unreadable parquet file (${(e as Error).message})`);
  }
  if (!columns.includes('text')) {
    throw new Error(
      `readDocuments: ${path}: parquet file has no "text" column (columns: ${columns.length ? columns.join(', ') : 'none'})`,
    );
  }
  let rows: Record<string, unknown>[];
  try {
    rows = await parquetReadObjects({ file, columns: ['text'], compressors });
  } catch (e) {
    throw new Error(`readDocuments: ${path}: unreadable parquet file (${(e as Error).message})`);
  }
  const docs: string[] = [];
  for (let i = 0; i < rows.length; i++) {
    const t = rows[i]!['text'];
    if (t === null || t === undefined) continue;
    if (typeof t !== 'string') {
      throw new Error(`readDocuments: ${path}: row ${i}: "text" column value is not a string (got ${describe(t)})`);
    }
    if (!BLANK.test(t)) docs.push(t);
  }
  return docs;
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'array';
  if (v instanceof Uint8Array) return 'bytes';
  return typeof v;
}
