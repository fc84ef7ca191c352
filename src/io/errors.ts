// Errors raised while reading or writing checkpoint files (safetensors, config.json,
// tokenizer.json). Every message starts with the path of the offending file or directory,
// so a user who points eqat at a broken download sees at once which file is wrong and why.

/** A file or directory whose contents are missing, malformed or unsupported. */
export class CheckpointError extends Error {
  /** The file or directory the problem was found in. */
  readonly path: string;

  constructor(path: string, problem: string) {
    super(`${path}: ${problem}`);
    this.name = 'CheckpointError';
    this.path = path;
  }
}

/** Short human description of a JSON value's type, for "expected X, got Y" messages. */
export function describeJson(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'object') return 'an object';
  if (typeof v === 'string') return `the string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  return `${typeof v} ${String(v)}`;
}

/** True for a plain JSON object (not null, not an array). */
export function isJsonObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
