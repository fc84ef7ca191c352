// Test tiers. `npm test` (the default tier) runs every unit, op and small-pipeline assertion in
// minutes; `npm run test:full` adds what takes minutes per test: whole pipelines on the CUDA
// kernel emulator (Block-AP, E2E-QP, eval and generation on llama-tiny, whose CPU-side twins
// the default tier already checks op by op and step by step) and the conformance runs against
// ../shared (PyTorch references, llama.cpp and onnxruntime). `npm run test:gpu` runs the CUDA
// tests on a real device, where whole pipelines take seconds and run in every tier.
// scripts/run-tests.mjs sets EQAT_TEST_TIER; the conformance directory is left out of the
// default tier there.

/** The tier this run is in: 'default', 'full' or 'gpu'. */
export const TIER = (process.env['EQAT_TEST_TIER'] ?? 'default') as 'default' | 'full' | 'gpu';

/** A skip reason for a test that runs in the full tier only, or false in that tier. */
export function fullTierOnly(what: string): string | false {
  return TIER === 'default' ? `${what}: full tier only (npm run test:full)` : false;
}

/**
 * The skip of a whole-pipeline test on a CUDA backend case: the case's own (no device, no
 * compiler), else full tier only on the emulator (minutes per run); a real GPU runs it always.
 */
export function pipelineSkip(bc: { name: string; skip: string | false }): string | false {
  return bc.skip || (bc.name === 'emulator' && fullTierOnly('whole pipeline on the emulator'));
}
