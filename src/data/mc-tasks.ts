// The zero-shot multiple-choice tasks of the EfficientQAT paper (PIQA, ARC-Easy, ARC-Challenge,
// HellaSwag, WinoGrande), defined as lm-evaluation-harness (lm-eval) defines them, and read from
// each dataset's Hugging Face hub schema (parquet, or JSON lines with the same fields).
//
// A task turns one row (a "doc") into requests (context, continuation) whose summed log-likelihood
// is scored, the gold index, and the choice strings whose lengths normalise acc_norm; see
// docs/EVAL.md for every choice per task and the lm-eval file it follows. In short (target
// delimiter " " everywhere: the continuation is " " + choice):
//   piqa           validation; "Question: {goal}\nAnswer:" → [sol1, sol2]; gold label
//   arc_easy       ARC-Easy test; "Question: {question}\nAnswer:" → choices.text; gold
//   arc_challenge  ARC-Challenge test; the same        choices.label.index(answerKey)
//   hellaswag      validation; preprocess(activity_label + ": " + ctx_a + " " + capitalize(ctx_b))
//                  → [preprocess(e) for e in endings]; gold int(label)
//   winogrande     winogrande_xl validation; partial scoring: one context per option,
//                  sentence[:i] + option (i = index of "_"), one shared continuation
//                  sentence[i+1:].strip(); gold {"1": 0, "2": 1}[answer]; acc only
//
// Task data on disk (`--task-data DIR`): for task T with evaluation split S, the first of
//   DIR/T.parquet, DIR/T.jsonl, DIR/T/S.parquet, DIR/T/S.jsonl, DIR/T/S-*.parquet (shards, in name order)
// that exists. Without a directory, the split comes from the hub through the Hugging Face cache
// (src/io/hub.ts: HF_HOME / HF_HUB_CACHE, HF_ENDPOINT, HF_TOKEN, HF_HUB_OFFLINE): the parquet
// file the hub's dataset viewer keeps of every public dataset, revision refs/convert/parquet,
// path <config>/<split>/0000.parquet (MC_TASKS[T].hub). Errors name the file, the row and the
// column, before any model is loaded.
import { existsSync, readdirSync, statSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parquetMetadata, parquetReadObjects, parquetSchema } from 'hyparquet';
import { compressors } from 'hyparquet-compressors';
import { UsageError } from '../cli/args.js';

/** One request: the log-likelihood of `continuation` after `context`. */
export interface McRequest {
  context: string;
  continuation: string;
}

/** A doc as lm-eval scores it. */
export interface McDoc {
  /** One request per choice, in choice order. */
  requests: McRequest[];
  /** Index of the correct choice. */
  gold: number;
  /** lm-eval's doc_to_choice: acc_norm divides each log-likelihood by its length in characters. */
  choices: string[];
}

export type McMetric = 'acc' | 'acc_norm';

export interface McTask {
  name: string;
  /** The split lm-eval evaluates (its test_split when set, else validation_split). */
  split: 'validation' | 'test';
  /** The hub dataset lm-eval loads (repository, configuration) and the file of the split in its parquet revision (HUB_PARQUET_REVISION). */
  hub: { repo: string; config: string | null; path: string };
  /** Columns of the hub schema that the task reads, with their types. */
  columns: Record<string, ColumnKind>;
  /** The metrics lm-eval's task YAML lists. */
  metrics: McMetric[];
  /** The lm-eval files this definition follows. */
  source: string;
  doc(row: Row, at: string): McDoc;
}

type ColumnKind = 'string' | 'int' | 'int or string' | 'list of strings' | '{text, label} lists of strings';
type Row = Record<string, unknown>;

const DELIM = ' '; // lm-eval's default target_delimiter

/** The revision of a hub dataset that holds its parquet conversion (the dataset viewer's). */
export const HUB_PARQUET_REVISION = 'refs/convert/parquet';

/** lm-eval's default multiple_choice requests: one context, the choices as continuations. */
function choicesAfter(context: string, choices: string[], gold: number): McDoc {
  return { requests: choices.map((c) => ({ context, continuation: DELIM + c })), gold, choices };
}

/** Python's str.capitalize(): the first character upper case, the rest lower case. */
export function pyCapitalize(s: string): string {
  const [first, ...rest] = Array.from(s);
  return first === undefined ? '' : first.toUpperCase() + rest.join('').toLowerCase();
}

/** lm-eval's HellaSwag preprocess (lm_eval/tasks/hellaswag/utils.py). */
export function hellaswagPreprocess(text: string): string {
  let t = text.trim();
  t = t.replaceAll(' [title]', '. ');
  t = t.replace(/\[[^\n]*?\]/g, ''); // re.sub("\\[.*?\\]", "", text): "." does not match a newline
  return t.replaceAll('  ', ' ');
}

const arc = (name: string, config: string): McTask => ({
  name,
  split: 'test',
  hub: { repo: 'allenai/ai2_arc', config, path: `${config}/test/0000.parquet` },
  columns: { question: 'string', choices: '{text, label} lists of strings', answerKey: 'string' },
  metrics: ['acc', 'acc_norm'],
  source: 'lm_eval/tasks/arc/arc_easy.yaml' + (name === 'arc_challenge' ? ', arc_challenge.yaml' : ''),
  doc(row, at) {
    const { text, label } = row['choices'] as { text: string[]; label: string[] };
    if (text.length !== label.length) throw new Error(`${at}: choices.text has ${text.length} entries but choices.label ${label.length}`);
    const gold = label.indexOf(row['answerKey'] as string);
    if (gold < 0) throw new Error(`${at}: answerKey ${JSON.stringify(row['answerKey'])} is not one of choices.label ${JSON.stringify(label)}`);
    return choicesAfter(`Question: ${row['question'] as string}\nAnswer:`, text, gold);
  },
});

/** The tasks by lm-eval name. */
export const MC_TASKS: Record<string, McTask> = {
  piqa: {
    name: 'piqa',
    split: 'validation',
    hub: { repo: 'baber/piqa', config: null, path: 'default/validation/0000.parquet' },
    columns: { goal: 'string', sol1: 'string', sol2: 'string', label: 'int' },
    metrics: ['acc', 'acc_norm'],
    source: 'lm_eval/tasks/piqa/piqa.yaml',
    doc(row, at) {
      const gold = row['label'] as number;
      if (gold !== 0 && gold !== 1) throw new Error(`${at}: label must be 0 or 1, got ${gold}`);
      return choicesAfter(`Question: ${row['goal'] as string}\nAnswer:`, [row['sol1'] as string, row['sol2'] as string], gold);
    },
  },
  arc_easy: arc('arc_easy', 'ARC-Easy'),
  arc_challenge: arc('arc_challenge', 'ARC-Challenge'),
  hellaswag: {
    name: 'hellaswag',
    split: 'validation',
    hub: { repo: 'Rowan/hellaswag', config: null, path: 'default/validation/0000.parquet' },
    columns: { activity_label: 'string', ctx_a: 'string', ctx_b: 'string', endings: 'list of strings', label: 'int or string' },
    metrics: ['acc', 'acc_norm'],
    source: 'lm_eval/tasks/hellaswag/hellaswag.yaml, utils.py',
    doc(row, at) {
      const endings = row['endings'] as string[];
      const label = row['label'];
      const gold = typeof label === 'number' ? label : /^\d+$/.test(label as string) ? Number(label) : NaN;
      if (!(Number.isInteger(gold) && gold >= 0 && gold < endings.length)) {
        throw new Error(`${at}: label must be the index of one of the ${endings.length} endings, got ${JSON.stringify(label)}`);
      }
      const ctx = `${row['ctx_a'] as string} ${pyCapitalize(row['ctx_b'] as string)}`;
      const query = hellaswagPreprocess(`${row['activity_label'] as string}: ${ctx}`);
      return choicesAfter(query, endings.map(hellaswagPreprocess), gold);
    },
  },
  winogrande: {
    name: 'winogrande',
    split: 'validation',
    hub: { repo: 'allenai/winogrande', config: 'winogrande_xl', path: 'winogrande_xl/validation/0000.parquet' },
    columns: { sentence: 'string', option1: 'string', option2: 'string', answer: 'string' },
    metrics: ['acc'],
    source: 'lm_eval/tasks/winogrande/default.yaml, preprocess_winogrande.py',
    doc(row, at) {
      const sentence = row['sentence'] as string;
      const i = sentence.indexOf('_');
      if (i < 0) throw new Error(`${at}: sentence has no "_" to fill: ${JSON.stringify(sentence)}`);
      const answer = row['answer'];
      const gold = answer === '1' ? 0 : answer === '2' ? 1 : -1;
      if (gold < 0) throw new Error(`${at}: answer must be "1" or "2", got ${JSON.stringify(answer)}`);
      const contexts = [row['option1'] as string, row['option2'] as string].map((o) => sentence.slice(0, i) + o);
      const continuation = DELIM + sentence.slice(i + 1).trim();
      return { requests: contexts.map((context) => ({ context, continuation })), gold, choices: contexts };
    },
  },
};

export const MC_TASK_NAMES = Object.keys(MC_TASKS);

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * The tasks of a comma-separated list (`flag` names where it came from in errors): unknown
 * names are refused with the closest known ones; duplicates are dropped.
 */
export function parseTaskList(list: string, flag: string): McTask[] {
  const names = list.split(',').map((s) => s.trim()).filter((s) => s !== '');
  if (names.length === 0) throw new UsageError(`${flag}: no task named; tasks: ${MC_TASK_NAMES.join(', ')}`);
  const out: McTask[] = [];
  for (const name of names) {
    const task = MC_TASKS[name.toLowerCase()];
    if (!task) {
      const near = MC_TASK_NAMES.map((n) => ({ n, d: editDistance(name.toLowerCase(), n) }))
        .filter(({ n, d }) => d <= Math.max(2, Math.floor(n.length / 3)) || n.includes(name.toLowerCase()))
        .sort((x, y) => x.d - y.d)
        .map(({ n }) => n);
      const hint = near.length ? `; did you mean ${near.join(' or ')}?` : '';
      throw new UsageError(`${flag}: no task "${name}"${hint} (tasks: ${MC_TASK_NAMES.join(', ')})`);
    }
    if (!out.includes(task)) out.push(task);
  }
  return out;
}

/** The files of `task` in a task-data directory (see the file header), or null when there are none. */
export function taskFiles(dir: string, task: McTask): string[] | null {
  const T = task.name;
  const S = task.split;
  for (const f of [join(dir, `${T}.parquet`), join(dir, `${T}.jsonl`), join(dir, T, `${S}.parquet`), join(dir, T, `${S}.jsonl`)]) {
    if (existsSync(f)) return [f];
  }
  const sub = join(dir, T);
  if (existsSync(sub) && statSync(sub).isDirectory()) {
    const shards = readdirSync(sub).filter((n) => n.startsWith(`${S}-`) && n.endsWith('.parquet')).sort();
    if (shards.length) return shards.map((n) => join(sub, n));
  }
  return null;
}

/** Where a task's data is looked for in `dir`, for error messages. */
export function taskFileCandidates(dir: string, task: McTask): string {
  const T = task.name;
  const S = task.split;
  return [`${T}.parquet`, `${T}.jsonl`, `${T}/${S}.parquet`, `${T}/${S}.jsonl`, `${T}/${S}-*.parquet`].map((p) => join(dir, p)).join(', ');
}

function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'a list';
  if (v instanceof Uint8Array) return 'bytes';
  return typeof v === 'object' ? 'an object' : `${typeof v} ${JSON.stringify(v)}`;
}

const isStrings = (v: unknown): v is string[] => Array.isArray(v) && v.every((x) => typeof x === 'string');

/** The value of column `col` of `row` as `kind` (int64 read as bigint becomes a number), or an error naming where. */
function columnValue(row: Row, col: string, kind: ColumnKind, at: string): unknown {
  let v = row[col];
  if (typeof v === 'bigint') v = Number(v);
  const ok =
    kind === 'string' ? typeof v === 'string'
    : kind === 'int' ? Number.isInteger(v)
    : kind === 'int or string' ? Number.isInteger(v) || typeof v === 'string'
    : kind === 'list of strings' ? isStrings(v)
    : v !== null && typeof v === 'object' && isStrings((v as Row)['text']) && isStrings((v as Row)['label']);
  if (!ok) throw new Error(`${at}: column "${col}" must be ${kind === 'int' ? 'an integer' : kind}, got ${describe(v)}`);
  return v;
}

/** The rows of one parquet or JSON-lines file, with its column names. */
async function readRows(file: string): Promise<{ rows: Row[]; columns: string[] }> {
  if (file.endsWith('.parquet')) {
    const bytes = await readFile(file);
    const buf = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength) as ArrayBuffer;
    try {
      const columns = parquetSchema(parquetMetadata(buf)).children.map((c) => c.element.name);
      return { rows: await parquetReadObjects({ file: buf, compressors }), columns };
    } catch (e) {
      throw new Error(`${file}: unreadable parquet file (${(e as Error).message})`);
    }
  }
  const text = await readFile(file, 'utf8');
  const rows: Row[] = [];
  const columns = new Set<string>();
  text.split('\n').forEach((line, i) => {
    if (/^\s*$/.test(line)) return;
    let v: unknown;
    try {
      v = JSON.parse(line);
    } catch (e) {
      throw new Error(`${file}: line ${i + 1}: invalid JSON (${(e as Error).message})`);
    }
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error(`${file}: line ${i + 1}: expected a JSON object (one row of the dataset)`);
    for (const k of Object.keys(v)) columns.add(k);
    rows.push(v as Row);
  });
  return { rows, columns: [...columns] };
}

export interface LoadedTask {
  task: McTask;
  files: string[];
  /** The docs evaluated (the first `limit` rows when limited), in dataset order. */
  docs: McDoc[];
  /** Rows in the split before the limit. */
  rows: number;
}

/**
 * Reads `task`'s evaluation split from `files` (parquet or JSON lines in the hub schema) and
 * builds its docs, the first `limit` when given. A missing column, a value of the wrong type
 * and an empty split are errors naming the file (and row).
 */
export async function loadTaskDocs(task: McTask, files: string[], limit?: number): Promise<LoadedTask> {
  const docs: McDoc[] = [];
  let rows = 0;
  for (const file of files) {
    const { rows: fileRows, columns } = await readRows(file);
    const missing = Object.keys(task.columns).filter((c) => !columns.includes(c));
    if (missing.length && fileRows.length) {
      throw new Error(
        `${file}: no column ${missing.map((c) => `"${c}"`).join(', ')} (columns: ${columns.join(', ') || 'none'}); ` +
          `${task.name} reads the ${task.hub.repo} schema: ${Object.entries(task.columns).map(([c, k]) => `${c} (${k})`).join(', ')}`,
      );
    }
    for (let i = 0; i < fileRows.length; i++) {
      rows++;
      if (limit !== undefined && docs.length >= limit) continue;
      const at = `${file}: row ${i + 1}`;
      const row: Row = {};
      for (const [c, kind] of Object.entries(task.columns)) row[c] = columnValue(fileRows[i]!, c, kind, at);
      docs.push(task.doc(row, at));
    }
  }
  if (rows === 0) throw new Error(`${files.join(', ')}: the ${task.split} split of ${task.name} has no rows`);
  return { task, files, docs, rows };
}
