// eqat as a library: 2-bit EfficientQAT (Block-AP, then E2E-QP) of the bundled llama-tiny at demo
// settings (well under a minute on a CPU), then its perplexity, a greedy generation and a GGUF
// export for llama.cpp.
//
//   node examples/quantize.mjs [OUT]        (OUT defaults to ./llama-tiny-w2g32)
//
// Ctrl-C stops training at the next step and keeps OUT.block-ap.partial/ or OUT.partial/;
// running the example again resumes there. For a real model, name its directory and a
// calibration corpus, and leave the phase settings out to get the paper's recipe.
import { fileURLToPath } from 'node:url';
import { evaluate, exportModel, generate, quantize } from 'eqat';

const fixtures = fileURLToPath(new URL('../fixtures/', import.meta.url));
const model = `${fixtures}llama-tiny`;
const out = process.argv[2] ?? 'llama-tiny-w2g32';

const quantized = await quantize({
  model,
  calib: `${fixtures}text/calib-sample.txt`,
  out,
  wbits: 2,
  groupSize: 32,
  blockAp: { trainSize: 16, valSize: 4, seqlen: 64, epochs: 1 },
  e2eQp: { trainSize: 16, seqlen: 64, batchSize: 4, epochs: 1 },
  onEvent(e) {
    if (e.type === 'epoch' && e.epoch > 0) console.log(`Block-AP block ${e.block + 1}/${e.of}: val loss ${e.valLoss?.toExponential(3)}`);
    if (e.type === 'e2e-step') console.log(`E2E-QP step ${e.step}/${e.of}: loss ${e.loss.toFixed(4)}`);
  },
});
console.log(`quantized into ${quantized.out} in ${quantized.seconds.toFixed(1)} s`);

const data = `${fixtures}text/eval-sample.txt`;
for (const m of [model, out]) {
  const { perplexity } = await evaluate({ model: m, data, seqlen: 64, maxWindows: 16 });
  console.log(`perplexity of ${m}: ${perplexity.ppl.toFixed(2)}`);
}

const { text } = await generate({ model: out, prompt: 'Once upon a time', maxNewTokens: 12 });
console.log(`generated: Once upon a time${text}`);

const gguf = await exportModel({ model: out, format: 'gguf', out: `${out}.gguf`, force: true });
console.log(`wrote ${gguf.path} (${gguf.bytes} bytes, exact: ${gguf.exact})`);
