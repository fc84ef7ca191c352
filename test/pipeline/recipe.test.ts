// The quantize recipe: presets per bit width, JSON and YAML files, merging flags over a file,
// the round trip recipeToJson → file → loadRecipeFile, and every error path (unknown keys at the
// top level and nested, wrong types, out-of-range values, batch relations, group sizes that do
// not divide a layer of llama-tiny, unparsable files, missing files); the flags of block-ap,
// e2e-qp and quantize generated from the schema, their defaults, and their range errors, which
// say what a recipe file's do, as do runBlockAp's and runE2eQp's checks of their options.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  defaultRecipe,
  loadRecipeFile,
  mergeRecipe,
  overridesFromFlags,
  parseRecipeObject,
  recipeFlagSpecs,
  recipeSettings,
  recipeToJson,
  RecipeError,
  validateRecipe,
  validateRecipeForModel,
  type QuantizeRecipe,
  type RecipeOverrides,
} from '../../src/pipeline/recipe.js';
import { blockApDefaults, validateBlockAp } from '../../src/pipeline/block-ap.js';
import { e2eQpDefaults, validateE2eQp } from '../../src/pipeline/e2e-qp.js';
import { loadConfig } from '../../src/io/hf-config.js';
import { parseFlags, UsageError, type FlagSpec } from '../../src/cli/args.js';
import { COMMANDS } from '../../src/cli/commands.js';
import { TINY } from '../golden.js';

const dir = mkdtempSync(join(tmpdir(), 'eqat-recipe-'));
process.on('exit', () => rmSync(dir, { recursive: true, force: true }));

let counter = 0;
function put(ext: string, content: string): string {
  const p = join(dir, `r${counter++}${ext}`);
  writeFileSync(p, content);
  return p;
}

const REQUIRED = { model: 'models/base', calib: 'data/calib.txt', out: 'models/out' };

function full(over: RecipeOverrides = {}, wbits = 2): QuantizeRecipe {
  return mergeRecipe({ ...REQUIRED, wbits }, over);
}

/** Asserts that fn throws a RecipeError whose message contains every fragment. */
function throwsWith(fn: () => unknown, ...fragments: string[]): RecipeError {
  let err: unknown;
  try {
    fn();
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof RecipeError, `expected a RecipeError, got ${String(err)}`);
  for (const frag of fragments) assert.ok(err.message.includes(frag), `message ${JSON.stringify(err.message)} lacks ${JSON.stringify(frag)}`);
  return err;
}

test('presets: the paper recipe per bit width', () => {
  for (const bits of [2, 3, 4, 8]) {
    const d = defaultRecipe(bits);
    const low = bits === 2;
    assert.equal(d.wbits, bits);
    assert.equal(d.groupSize, low ? 64 : 128);
    assert.equal(d.seed, blockApDefaults(bits).seed);
    assert.deepEqual(d.blockAp, {
      trainSize: 4096,
      valSize: 64,
      seqlen: 2048,
      batchSize: 2,
      epochs: 2,
      quantLr: 1e-4,
      weightLr: low ? 2e-5 : 1e-5,
      minLrFactor: 20,
      weightDecay: 0,
    });
    assert.deepEqual(d.e2eQp, {
      data: null,
      dataFormat: 'auto',
      trainSize: 4096,
      seqlen: 4096,
      batchSize: 32,
      microBatchSize: 1,
      epochs: 1,
      lr: low ? 2e-5 : 1e-5,
      warmupRatio: 0.03,
      maxGradNorm: 0.3,
      weightDecay: 0,
    });
    // the Block-AP part agrees with the block-ap command's defaults
    const b = blockApDefaults(bits);
    for (const k of Object.keys(d.blockAp) as (keyof typeof d.blockAp)[]) assert.equal(d.blockAp[k], b[k], k);
    // the E2E-QP part is the e2e-qp command's defaults (one table), with the data left to calib
    const { seed, ...e2e } = e2eQpDefaults(bits);
    assert.deepEqual(d.e2eQp, { data: null, ...e2e });
    assert.equal(d.seed, seed);
    validateRecipe({ ...d, ...REQUIRED }, 'preset');
  }
});

test('YAML file: snake_case keys, 1e-5 is a number, missing keys take the preset of the wbits', () => {
  const path = put(
    '.yaml',
    [
      '# a 2-bit run with a shorter E2E-QP',
      'model: models/base',
      'calib: data/calib.txt',
      'out: models/out',
      'wbits: 2',
      'block_ap:',
      '  epochs: 1',
      '  quant_lr: 5e-5',
      'e2e_qp:',
      '  data: data/alpaca.jsonl',
      '  data_format: instruct',
      '  batch_size: 8',
      '  micro_batch_size: 2',
      '  warmup_ratio: 0',
      '',
    ].join('\n'),
  );
  const o = loadRecipeFile(path);
  assert.deepEqual(o, {
    model: 'models/base',
    calib: 'data/calib.txt',
    out: 'models/out',
    wbits: 2,
    blockAp: { epochs: 1, quantLr: 5e-5 },
    e2eQp: { data: 'data/alpaca.jsonl', dataFormat: 'instruct', batchSize: 8, microBatchSize: 2, warmupRatio: 0 },
  });
  const r = mergeRecipe(o, {}, path);
  validateRecipe(r, path);
  assert.equal(r.groupSize, 64);
  assert.equal(r.blockAp.weightLr, 2e-5);
  assert.equal(r.blockAp.quantLr, 5e-5);
  assert.equal(r.blockAp.trainSize, 4096);
  assert.equal(r.e2eQp.lr, 2e-5);
  assert.equal(r.e2eQp.batchSize, 8);
  assert.equal(r.e2eQp.seqlen, 4096);
});

test('JSON file; command-line overrides win and the presets follow the final wbits', () => {
  const path = put('.json', JSON.stringify({ model: 'm', calib: 'c.parquet', out: 'o', wbits: 4, block_ap: { val_size: 0 } }));
  const file = loadRecipeFile(path);
  const r4 = mergeRecipe(file, {});
  assert.equal(r4.groupSize, 128);
  assert.equal(r4.blockAp.weightLr, 1e-5);
  assert.equal(r4.blockAp.valSize, 0);
  // --wbits 2 on the command line: the 2-bit presets for everything the file leaves out
  const r2 = mergeRecipe(file, { wbits: 2, out: 'o2', e2eQp: { lr: 3e-5, epochs: undefined } });
  assert.equal(r2.wbits, 2);
  assert.equal(r2.out, 'o2');
  assert.equal(r2.groupSize, 64);
  assert.equal(r2.blockAp.weightLr, 2e-5);
  assert.equal(r2.blockAp.valSize, 0, 'the file value stays');
  assert.equal(r2.e2eQp.lr, 3e-5);
  assert.equal(r2.e2eQp.epochs, 1, 'undefined overrides are ignored');
  // file values the flags do not touch survive; explicit file values are not replaced by presets
  const explicit = loadRecipeFile(put('.yml', 'wbits: 4\ngroup_size: 32\nblock_ap: {weight_lr: 0.001}\n'));
  const r = mergeRecipe(explicit, { ...REQUIRED, wbits: 2 });
  assert.equal(r.groupSize, 32);
  assert.equal(r.blockAp.weightLr, 0.001);
});

test('round trip: recipeToJson → JSON and YAML files → loadRecipeFile gives the same recipe', () => {
  const r = full({
    seed: 7,
    groupSize: 32,
    blockAp: { trainSize: 16, valSize: 4, seqlen: 64, epochs: 1, weightLr: 3e-6 },
    e2eQp: { data: 'd.jsonl', dataFormat: 'instruct', batchSize: 4, microBatchSize: 2, trainSize: 8, seqlen: 128, maxGradNorm: 0 },
  });
  validateRecipe(r, 'test');
  const json = recipeToJson(r);
  assert.deepEqual(Object.keys(json), ['model', 'calib', 'out', 'wbits', 'group_size', 'seed', 'block_ap', 'e2e_qp', 'eval']);
  assert.deepEqual(Object.keys(json['block_ap'] as object), [
    'train_size',
    'val_size',
    'seqlen',
    'batch_size',
    'epochs',
    'quant_lr',
    'weight_lr',
    'min_lr_factor',
    'weight_decay',
  ]);
  assert.equal((json['e2e_qp'] as Record<string, unknown>)['micro_batch_size'], 2);
  const back = mergeRecipe(loadRecipeFile(put('.json', JSON.stringify(json, null, 2))), {});
  assert.deepEqual(back, r);
  // JSON is YAML: the same text read as YAML gives the same recipe
  assert.deepEqual(mergeRecipe(loadRecipeFile(put('.yaml', JSON.stringify(json, null, 2))), {}), r);
  // data: null survives the trip
  const d = full();
  const back2 = mergeRecipe(loadRecipeFile(put('.json', JSON.stringify(recipeToJson(d)))), {});
  assert.equal(back2.e2eQp.data, null);
  assert.deepEqual(back2, d);
});

test('unknown keys name the full key path and suggest the right one', () => {
  throwsWith(() => loadRecipeFile(put('.yaml', 'wbits: 2\nblock_ap:\n  lr: 1e-4\n')), 'block_ap.lr: unknown key (did you mean quant_lr or weight_lr?)');
  const p = put('.json', JSON.stringify({ wbits: 2, groupsize: 64 }));
  const e = throwsWith(() => loadRecipeFile(p), p, 'groupsize: unknown key (did you mean group_size?)');
  assert.equal(e.key, 'groupsize');
  assert.equal(e.where, p);
  throwsWith(() => parseRecipeObject({ groupSize: 64 }, 'f'), 'f: groupSize: unknown key (did you mean group_size?)');
  throwsWith(() => parseRecipeObject({ train_size: 3 }, 'f'), 'f: train_size: unknown key (did you mean block_ap.train_size or e2e_qp.train_size?)');
  throwsWith(() => parseRecipeObject({ e2e_qp: { epoch: 2 } }, 'f'), 'f: e2e_qp.epoch: unknown key (did you mean epochs?)');
  throwsWith(() => parseRecipeObject({ e2e_qp: { quant_lr: 2 } }, 'f'), 'e2e_qp.quant_lr: unknown key (did you mean lr?)');
  throwsWith(() => parseRecipeObject({ blockap: {} }, 'f'), 'f: blockap: unknown key (did you mean block_ap?)');
  throwsWith(() => parseRecipeObject({ e2e_qp: { frobnicate: 1 } }, 'f'), 'f: e2e_qp.frobnicate: unknown key');
});

test('wrong types name the key and the expected type', () => {
  const cases: [unknown, string][] = [
    [{ wbits: '4' }, 'wbits: expected an integer, got the string "4"'],
    [{ wbits: 4.5 }, 'wbits: expected an integer, got number 4.5'],
    [{ model: 3 }, 'model: expected a string, got number 3'],
    [{ seed: null }, 'seed: expected an integer, got null'],
    [{ block_ap: 3 }, 'block_ap: expected a mapping of settings, got number 3'],
    [{ block_ap: [] }, 'block_ap: expected a mapping of settings, got an array'],
    [{ block_ap: { epochs: 1.5 } }, 'block_ap.epochs: expected an integer, got number 1.5'],
    [{ block_ap: { quant_lr: '1e-4' } }, 'block_ap.quant_lr: expected a number, got the string "1e-4"'],
    [{ e2e_qp: { data: 5 } }, 'e2e_qp.data: expected a string or null, got number 5'],
    [{ e2e_qp: { data_format: 'chat' } }, "e2e_qp.data_format: expected one of 'auto', 'text', 'instruct', got the string \"chat\""],
    [{ e2e_qp: { micro_batch_size: true } }, 'e2e_qp.micro_batch_size: expected an integer, got boolean true'],
    [{ eval: { baseline: 'no' } }, 'eval.baseline: expected true or false, got the string "no"'],
    [{ eval: { baseline: 0 } }, 'eval.baseline: expected true or false, got number 0'],
  ];
  for (const [doc, msg] of cases) throwsWith(() => parseRecipeObject(doc, 'r.json'), `r.json: ${msg}`);
  throwsWith(() => parseRecipeObject([1, 2], 'r.json'), 'r.json: a recipe must be a mapping of keys to values, got an array');
  // YAML's own types: .inf is not a finite number; an empty value is null
  throwsWith(() => loadRecipeFile(put('.yaml', 'block_ap:\n  quant_lr: .inf\n')), 'block_ap.quant_lr: expected a number, got number Infinity');
  throwsWith(() => loadRecipeFile(put('.yaml', 'seed:\n')), 'seed: expected an integer, got null');
  // YAML 1.2: yes is a string, false the boolean
  throwsWith(() => loadRecipeFile(put('.yaml', 'eval:\n  baseline: yes\n')), 'eval.baseline: expected true or false, got the string "yes"');
  assert.deepEqual(loadRecipeFile(put('.yaml', 'eval:\n  baseline: false\n')), { eval: { baseline: false } });
});

test('out-of-range values are rejected, in files and in validateRecipe', () => {
  const cases: [unknown, string][] = [
    [{ wbits: 5 }, 'wbits: must be 2, 3, 4 or 8, got 5'],
    [{ group_size: 0 }, 'group_size: must be >= 1, got 0'],
    [{ seed: -1 }, 'seed: must be >= 0, got -1'],
    [{ seed: 2 ** 32 }, 'seed: must be <= 4294967295, got 4294967296'],
    [{ model: '  ' }, 'model: must not be empty'],
    [{ block_ap: { train_size: 0 } }, 'block_ap.train_size: must be >= 1, got 0'],
    [{ block_ap: { val_size: -1 } }, 'block_ap.val_size: must be >= 0, got -1'],
    [{ block_ap: { seqlen: 1 } }, 'block_ap.seqlen: must be >= 2, got 1'],
    [{ block_ap: { epochs: -1 } }, 'block_ap.epochs: must be >= 0, got -1'],
    [{ block_ap: { weight_lr: -1e-5 } }, 'block_ap.weight_lr: must be >= 0, got -0.00001'],
    [{ block_ap: { min_lr_factor: 0.5 } }, 'block_ap.min_lr_factor: must be >= 1, got 0.5'],
    [{ e2e_qp: { micro_batch_size: 0 } }, 'e2e_qp.micro_batch_size: must be >= 1, got 0'],
    [{ e2e_qp: { warmup_ratio: 1 } }, 'e2e_qp.warmup_ratio: must be < 1, got 1'],
    [{ e2e_qp: { warmup_ratio: -0.1 } }, 'e2e_qp.warmup_ratio: must be >= 0, got -0.1'],
    [{ e2e_qp: { max_grad_norm: -1 } }, 'e2e_qp.max_grad_norm: must be >= 0, got -1'],
    [{ e2e_qp: { data: '' } }, 'e2e_qp.data: must not be empty'],
  ];
  for (const [doc, msg] of cases) throwsWith(() => parseRecipeObject(doc, 'r.yaml'), `r.yaml: ${msg}`);

  // the same checks on a recipe built in code
  const bad = full();
  bad.e2eQp.warmupRatio = 1.5;
  throwsWith(() => validateRecipe(bad, 'cli'), 'cli: e2e_qp.warmup_ratio: must be < 1, got 1.5');
  const bad2 = full();
  (bad2 as { wbits: number }).wbits = 6;
  throwsWith(() => validateRecipe(bad2, 'cli'), 'cli: wbits: must be 2, 3, 4 or 8, got 6');
  const bad3 = full();
  bad3.blockAp.seqlen = Number.NaN;
  throwsWith(() => validateRecipe(bad3, 'cli'), 'block_ap.seqlen: expected an integer, got number NaN');
  const bad4 = full();
  delete (bad4.e2eQp as Partial<typeof bad4.e2eQp>).lr;
  throwsWith(() => validateRecipe(bad4, 'cli'), 'e2e_qp.lr: missing');
});

test('relations between keys: micro batch, train size vs batch, data formats, out vs model', () => {
  throwsWith(
    () => validateRecipe(full({ e2eQp: { batchSize: 32, microBatchSize: 3 } }), 'r.yaml'),
    'r.yaml: e2e_qp.batch_size: 32 is not a multiple of e2e_qp.micro_batch_size = 3',
  );
  validateRecipe(full({ e2eQp: { batchSize: 32, microBatchSize: 2 } }), 'r.yaml');
  throwsWith(
    () => validateRecipe(full({ e2eQp: { trainSize: 16 } }), 'r.yaml'),
    'e2e_qp.train_size: 16 is less than e2e_qp.batch_size = 32',
  );
  validateRecipe(full({ e2eQp: { trainSize: 16, epochs: 0 } }), 'r.yaml'); // E2E-QP skipped: no constraint
  throwsWith(
    () => validateRecipe(full({ blockAp: { trainSize: 1 } }), 'r.yaml'),
    'block_ap.train_size: 1 is less than block_ap.batch_size = 2',
  );
  validateRecipe(full({ blockAp: { trainSize: 1, epochs: 0 } }), 'r.yaml'); // RTN
  throwsWith(() => validateRecipe(full({ calib: 'c.csv' }), 'r.yaml'), 'r.yaml: calib: c.csv: unsupported corpus format');
  throwsWith(
    () => validateRecipe(full({ e2eQp: { dataFormat: 'instruct' } }), 'r.yaml'),
    "calib: data/calib.txt: e2e_qp.data_format 'instruct' needs a .jsonl or .json file",
  );
  throwsWith(
    () => validateRecipe(full({ e2eQp: { data: 'a.json', dataFormat: 'text' } }), 'r.yaml'),
    "e2e_qp.data: a.json: unsupported text corpus format for e2e_qp.data_format 'text'",
  );
  throwsWith(() => validateRecipe(full({ e2eQp: { data: 'a.csv' } }), 'r.yaml'), 'e2e_qp.data: a.csv: unsupported data format');
  validateRecipe(full({ e2eQp: { data: 'alpaca.json' } }), 'r.yaml');
  throwsWith(() => validateRecipe(full({ out: './models/base/' }), 'r.yaml'), 'out: must differ from model');
});

test('missing model/calib/out/wbits are named by mergeRecipe', () => {
  throwsWith(() => mergeRecipe({ calib: 'c.txt', out: 'o', wbits: 2 }, {}, 'r.yaml'), 'r.yaml: model: missing (set model in the recipe file or pass --model)');
  throwsWith(() => mergeRecipe({ model: 'm', calib: 'c.txt', out: 'o' }, {}, 'r.yaml'), 'r.yaml: wbits: missing');
  throwsWith(() => mergeRecipe({ model: 'm', out: 'o', wbits: 3 }), 'recipe: calib: missing');
  throwsWith(() => mergeRecipe({ model: 'm', calib: 'c.txt', wbits: 3 }, { out: undefined }), 'out: missing');
});

test('group size against fixtures/llama-tiny: every layer it does not divide is named', () => {
  const cfg = loadConfig(TINY); // hidden 128, intermediate 384, heads*head_dim 128, 2048 positions
  // the default E2E-QP seqlen (4096) exceeds the fixture's positions: that check has its own test
  const fits = { e2eQp: { seqlen: 2048 } };
  for (const G of [32, 64, 128]) validateRecipeForModel(full({ ...fits, groupSize: G, model: TINY }, 4), cfg);
  for (const bits of [2, 3, 8]) validateRecipeForModel(full({ ...fits, groupSize: 64, model: TINY }, bits), cfg);
  const e = throwsWith(
    () => validateRecipeForModel(full({ groupSize: 256, model: TINY }), cfg, 'r.yaml'),
    'r.yaml: group_size: 256 does not divide the input size of',
    'q_proj, k_proj, v_proj, gate_proj, up_proj (in_features hidden_size = 128)',
    'o_proj (in_features num_attention_heads*head_dim = 128)',
    TINY,
  );
  assert.equal(e.key, 'group_size');
  // down_proj's in_features 384 is not a multiple of 256 either
  assert.ok(e.message.includes('down_proj (in_features intermediate_size = 384)'), e.message);
});

test('group size against a modified config: only the intermediate layer fails; GPTQ layout is checked', () => {
  const cfg = loadConfig(TINY);
  // intermediate 352 = 11·32: 64 divides hidden (128) but not 352
  const e = throwsWith(
    () => validateRecipeForModel(full({ groupSize: 64 }), { ...cfg, intermediateSize: 352 }, 'r.yaml'),
    'r.yaml: group_size: 64 does not divide the input size of down_proj (in_features intermediate_size = 352)',
  );
  assert.ok(!e.message.includes('q_proj'));
  // intermediate 336 = 16·21 is divisible by 16 but is no multiple of 32: GPTQ cannot store down_proj
  throwsWith(
    () => validateRecipeForModel(full({ groupSize: 16 }), { ...cfg, intermediateSize: 336 }, 'r.yaml'),
    'r.yaml: group_size: ',
    'cannot be stored as a GPTQ checkpoint',
    'gate_proj (336x128)',
  );
});

test('unparsable files name the file and the line; missing and odd files too', () => {
  const y = put('.yaml', 'wbits: 2\nblock_ap:\n  quant_lr: [1\n');
  throwsWith(() => loadRecipeFile(y), y, 'not valid YAML', 'line');
  const dup = put('.yml', 'wbits: 2\nwbits: 3\n');
  throwsWith(() => loadRecipeFile(dup), dup, 'not valid YAML', 'Map keys must be unique', 'line 2');
  const j = put('.json', '{\n  "wbits": 2,\n}\n');
  throwsWith(() => loadRecipeFile(j), j, 'not valid JSON', 'line 3');
  const empty = put('.yaml', '# nothing here\n');
  throwsWith(() => loadRecipeFile(empty), empty, 'the recipe file is empty');
  const scalar = put('.yaml', '42\n');
  throwsWith(() => loadRecipeFile(scalar), scalar, 'a recipe must be a mapping of keys to values, got number 42');
  const missing = join(dir, 'nope.yaml');
  throwsWith(() => loadRecipeFile(missing), missing, 'recipe file not found');
  throwsWith(() => loadRecipeFile(dir + '.json'), 'recipe file not found');
  const txt = put('.toml', 'wbits = 2');
  throwsWith(() => loadRecipeFile(txt), txt, 'unsupported recipe format (extension ".toml"); use .json, .yaml or .yml');
  const yamlDir = join(dir, 'dir.yaml');
  mkdirSync(yamlDir);
  throwsWith(() => loadRecipeFile(yamlDir), yamlDir, 'not a regular file');
});

test('flags: one per key, parsed by the CLI parser, mapped to overrides; flags win over the file', () => {
  const specs = recipeFlagSpecs();
  for (const name of ['model', 'calib', 'out', 'wbits', 'group-size', 'seed', 'block-ap-train-size', 'block-ap-quant-lr', 'e2e-qp-micro-batch-size', 'e2e-qp-lr', 'e2e-qp-data-format']) {
    assert.ok(specs[name], `flag --${name}`);
    assert.equal(specs[name]!.default, undefined, `--${name} has no default`);
  }
  assert.deepEqual(specs['e2e-qp-data-format']!.choices, ['auto', 'text', 'instruct']);
  const flags = parseFlags('quantize', ['--wbits', '3', '--block-ap-epochs', '0', '--e2e-qp-lr', '5e-6', '--e2e-qp-data', 'x.jsonl'], specs);
  const o = overridesFromFlags(flags);
  assert.deepEqual(o, { wbits: 3, blockAp: { epochs: 0 }, e2eQp: { lr: 5e-6, data: 'x.jsonl' }, eval: {} });
  const file = parseRecipeObject({ ...REQUIRED, wbits: 2, block_ap: { epochs: 1, train_size: 8 } }, 'r.yaml');
  const r = mergeRecipe(file, o, 'r.yaml + command line');
  assert.equal(r.wbits, 3);
  assert.equal(r.groupSize, 128);
  assert.equal(r.blockAp.epochs, 0);
  assert.equal(r.blockAp.trainSize, 8);
  assert.equal(r.blockAp.weightLr, 1e-5);
  assert.equal(r.e2eQp.lr, 5e-6);
  assert.equal(r.e2eQp.data, 'x.jsonl');
  validateRecipe(r, 'r.yaml + command line');
  // eval.baseline: on by default; --no-eval-baseline and --eval-baseline win over the file either way
  assert.equal(r.eval.baseline, true);
  const off = overridesFromFlags(parseFlags('quantize', ['--no-eval-baseline'], specs));
  assert.deepEqual(off.eval, { baseline: false });
  assert.equal(mergeRecipe(parseRecipeObject({ ...REQUIRED, wbits: 4, eval: { baseline: true } }, 'r.yaml'), off).eval.baseline, false);
  const on = overridesFromFlags(parseFlags('quantize', ['--eval-baseline'], specs));
  assert.equal(mergeRecipe(parseRecipeObject({ ...REQUIRED, wbits: 4, eval: { baseline: false } }, 'r.yaml'), on).eval.baseline, true);
  assert.throws(() => overridesFromFlags(parseFlags('quantize', ['--eval-baseline', '--no-eval-baseline'], specs)), /--eval-baseline and --no-eval-baseline: give one or the other/);
});

/** A flag spec without its check function (which is a new closure per call). */
function shape({ check: _check, ...rest }: FlagSpec): Omit<FlagSpec, 'check'> {
  return rest;
}

test('flags from the schema: every setting is a flag on each command that takes it, in that command\'s table', () => {
  const camel = (k: string) => k.replace(/_([a-z0-9])/g, (_, c: string) => c.toUpperCase());
  const taken: Record<string, number> = { 'block-ap': 0, 'e2e-qp': 0, quantize: 0 };
  for (const { path, commands } of recipeSettings()) {
    assert.ok(commands.includes('quantize'), `${path}: quantize takes every setting`);
    for (const command of commands) {
      const specs = recipeFlagSpecs(command);
      const name = command === 'quantize' ? path.replace(/[._]/g, '-') : path.split('.').pop()!.replace(/_/g, '-');
      assert.ok(specs[name], `${command} --${name} (${path})`);
      assert.deepEqual(shape(COMMANDS[command]!.flags[name]!), shape(specs[name]!), `${command} --${name} is the schema's`);
      // the flag's value lands on the setting's path
      const o = overridesFromFlags({ [name]: 'value' }, command) as Record<string, Record<string, unknown>>;
      const [section, key] = path.includes('.') ? path.split('.') : [null, path];
      assert.equal(section ? o[camel(section)]![camel(key!)] : o[camel(key!)], 'value', `${command} --${name} → ${path}`);
      taken[command]!++;
    }
  }
  assert.deepEqual(taken, { 'block-ap': 15, 'e2e-qp': 13, quantize: 33 });
  for (const command of ['block-ap', 'e2e-qp', 'quantize'] as const) {
    // a true/false setting also has its negation (--no-eval-baseline)
    const negations = Object.keys(recipeFlagSpecs(command)).filter((n) => n.startsWith('no-'));
    assert.deepEqual(negations, command === 'quantize' ? ['no-eval-baseline'] : []);
    assert.equal(Object.keys(recipeFlagSpecs(command)).length - negations.length, taken[command], `${command}: no flag without a setting`);
  }
});

test('flags from the schema: block-ap and e2e-qp keep their defaults; per-bit presets are named in --help', () => {
  const defaults = (command: 'block-ap' | 'e2e-qp') =>
    Object.fromEntries(Object.entries(recipeFlagSpecs(command)).map(([name, s]) => [name, s.required ? 'required' : (s.default ?? s.defaultNote)]));
  assert.deepEqual(defaults('block-ap'), {
    model: 'required',
    calib: undefined,
    out: 'required',
    wbits: 'required',
    'group-size': 128, // fixed on block-ap, unlike the recipe's preset (64 at 2 bits)
    seed: 2,
    'train-size': 4096,
    'val-size': 64,
    seqlen: 2048,
    'batch-size': 2,
    epochs: 2,
    'quant-lr': 1e-4,
    'weight-lr': 'default: 2e-5 for 2-bit, 1e-5 otherwise',
    'min-lr-factor': 20,
    'weight-decay': 0,
  });
  assert.deepEqual(defaults('e2e-qp'), {
    out: 'required',
    seed: 2,
    data: 'required',
    'data-format': 'auto',
    'train-size': 4096,
    seqlen: 4096,
    'batch-size': 32,
    'micro-batch-size': 1,
    epochs: 1,
    lr: 'default: 2e-5 for 2-bit, 1e-5 otherwise',
    'warmup-ratio': 0.03,
    'max-grad-norm': 0.3,
    'weight-decay': 0,
  });
  const q = recipeFlagSpecs('quantize');
  assert.equal(q['group-size']!.defaultNote, 'preset: 64 for 2-bit, 128 otherwise');
  assert.equal(q['block-ap-quant-lr']!.defaultNote, 'preset: 1e-4');
  assert.equal(q['e2e-qp-data']!.defaultNote, 'preset: the calibration data');
  assert.equal(q['e2e-qp-lr']!.help, 'E2E-QP learning rate of the step sizes');
  assert.equal(q['model']!.defaultNote, undefined);
});

test('range errors: a flag, a recipe file and the options of runBlockAp and runE2eQp say the same, on every command that takes the setting', () => {
  /** The problem a flag value is refused with ("must be >= 1, got 0"), or null when it is taken. */
  const flagProblem = (command: 'block-ap' | 'e2e-qp' | 'quantize', name: string, value: string): string | null => {
    const specs = recipeFlagSpecs(command);
    const valid: Record<string, string> = { model: 'm', out: 'o', wbits: '2', data: 'd.txt' };
    const others = Object.keys(specs).filter((n) => specs[n]!.required && n !== name).map((n) => `--${n}=${valid[n]}`);
    try {
      parseFlags(command, [...others, `--${name}=${value}`], specs);
      return null;
    } catch (e) {
      assert.ok(e instanceof UsageError, String(e));
      const prefix = `eqat ${command}: --${name} `;
      assert.ok(e.message.startsWith(prefix), e.message);
      return e.message.slice(prefix.length);
    }
  };
  const fileProblem = (path: string, value: number): string => {
    const [section, key] = path.includes('.') ? path.split('.') : [null, path];
    const doc = section ? { [section]: { [key!]: value } } : { [key!]: value };
    const e = throwsWith(() => parseRecipeObject(doc, 'r.yaml'), `r.yaml: ${path}: `);
    return e.message.slice(`r.yaml: ${path}: `.length);
  };
  /** The error runBlockAp or runE2eQp refuses an option with before any work, or null when it is taken. */
  const cfg = loadConfig(TINY);
  const libraryProblem = (command: 'block-ap' | 'e2e-qp', settings: Record<string, unknown>): string | null => {
    try {
      if (command === 'block-ap') validateBlockAp({ ...blockApDefaults(2), model: TINY, calib: 'c.txt', out: 'o', wbits: 2, groupSize: 64, ...settings }, cfg);
      else validateE2eQp({ ...e2eQpDefaults(2), model: 'm', data: 'd.txt', out: 'o', ...settings });
      return null;
    } catch (e) {
      return (e as Error).message;
    }
  };
  const camel = (key: string): string => key.replace(/_([a-z])/g, (_, c: string) => c.toUpperCase());
  const cases: [string, number, string][] = [
    ['wbits', 5, 'must be 2, 3, 4 or 8, got 5'],
    ['wbits', 1, 'must be 2, 3, 4 or 8, got 1'],
    ['group_size', 0, 'must be >= 1, got 0'],
    ['seed', -1, 'must be >= 0, got -1'],
    ['seed', 2 ** 32, 'must be <= 4294967295, got 4294967296'],
    ['block_ap.train_size', 0, 'must be >= 1, got 0'],
    ['block_ap.val_size', -1, 'must be >= 0, got -1'],
    ['block_ap.seqlen', 1, 'must be >= 2, got 1'],
    ['block_ap.epochs', -1, 'must be >= 0, got -1'],
    ['block_ap.weight_lr', -0.5, 'must be >= 0, got -0.5'],
    ['block_ap.min_lr_factor', 0.5, 'must be >= 1, got 0.5'],
    ['e2e_qp.micro_batch_size', 0, 'must be >= 1, got 0'],
    ['e2e_qp.epochs', -1, 'must be >= 0, got -1'],
    ['e2e_qp.warmup_ratio', 1, 'must be < 1, got 1'],
    ['e2e_qp.warmup_ratio', -0.1, 'must be >= 0, got -0.1'],
    ['e2e_qp.max_grad_norm', -1, 'must be >= 0, got -1'],
  ];
  for (const [path, value, problem] of cases) {
    assert.equal(fileProblem(path, value), problem, path);
    assert.equal(flagProblem('quantize', path.replace(/[._]/g, '-'), String(value)), problem, `quantize ${path}`);
    const phase = path.startsWith('block_ap.') ? 'block-ap' : path.startsWith('e2e_qp.') ? 'e2e-qp' : null;
    if (phase && !(phase === 'e2e-qp' && path === 'e2e_qp.epochs')) {
      const key = path.split('.')[1]!;
      assert.equal(flagProblem(phase, key.replace(/_/g, '-'), String(value)), problem, `${phase} ${path}`);
      assert.equal(libraryProblem(phase, { [camel(key)]: value }), `--${key.replace(/_/g, '-')}: ${problem}`, `${phase} options ${path}`);
    }
  }
  assert.equal(flagProblem('block-ap', 'wbits', '5'), 'must be 2, 3, 4 or 8, got 5');
  assert.equal(flagProblem('block-ap', 'group-size', '0'), 'must be >= 1, got 0');
  assert.equal(libraryProblem('block-ap', { wbits: 5 }), '--wbits: must be 2, 3, 4 or 8, got 5');
  assert.equal(libraryProblem('block-ap', { groupSize: 0 }), '--group-size: must be >= 1, got 0');
  // where a command's range differs from the recipe's: e2e-qp always trains; block-ap and
  // e2e-qp take any integer seed
  assert.equal(flagProblem('e2e-qp', 'epochs', '0'), 'must be >= 1, got 0');
  assert.equal(libraryProblem('e2e-qp', { epochs: 0 }), '--epochs: must be >= 1, got 0');
  assert.equal(flagProblem('quantize', 'e2e-qp-epochs', '0'), null);
  for (const command of ['block-ap', 'e2e-qp'] as const) {
    assert.equal(flagProblem(command, 'seed', '-1'), null);
    assert.equal(libraryProblem(command, { seed: -1 }), null);
  }
  // the rules between settings, as validateRecipe words them, with the flags' names
  assert.equal(libraryProblem('e2e-qp', { batchSize: 6, microBatchSize: 4 }), '--batch-size: 6 is not a multiple of --micro-batch-size = 4');
  assert.equal(libraryProblem('e2e-qp', { trainSize: 16 }), '--train-size: 16 is less than --batch-size = 32');
  assert.equal(libraryProblem('block-ap', { trainSize: 1 }), '--train-size: 1 is less than --batch-size = 2');
  assert.equal(libraryProblem('block-ap', { trainSize: 1, epochs: 0 }), null); // RTN
  assert.equal(libraryProblem('block-ap', { calib: null }), '--calib: is required when --epochs > 0');
  assert.equal(libraryProblem('block-ap', { calib: null, epochs: 0 }), null);
  // a path, never null, on e2e-qp (null is the calibration data only in a recipe)
  assert.equal(libraryProblem('e2e-qp', { data: null }), '--data: expected a string, got null');
  assert.equal(flagProblem('e2e-qp', 'data', ' '), 'must not be empty');
  assert.equal(libraryProblem('e2e-qp', { lr: undefined }), '--lr: missing');
  // types and empty strings, as in files
  assert.equal(flagProblem('quantize', 'block-ap-epochs', '1.5'), "must be an integer, got '1.5'");
  assert.equal(flagProblem('quantize', 'e2e-qp-data', ' '), 'must not be empty (use null for the default)');
  assert.equal(flagProblem('block-ap', 'out', ''), 'must not be empty');
});
