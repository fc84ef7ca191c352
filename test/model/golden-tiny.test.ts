// The bundled llama-tiny checkpoint against its PyTorch golden outputs (f32 compute).
import { test } from 'node:test';
import { checkForward, checkGreedy, checkTokenizer, loadModel, readGolden, TINY } from '../golden.js';

const golden = readGolden(TINY);
const model = loadModel(TINY);

test('llama-tiny: tokenizer ids equal the golden ids', () => checkTokenizer(TINY, golden));
test('llama-tiny: logits within 1e-3 and mean cross-entropy within 1e-4 of PyTorch', () => {
  checkForward(model, golden);
});
test('llama-tiny: greedy tokens equal PyTorch', () => checkGreedy(model, golden));
