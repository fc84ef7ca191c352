// Device selection without a GPU: resolveDevice and deviceForCommand against fake probes, and
// probeCuda / cudaDevice over a backend whose probe fails or reports no CUDA.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  cudaDevice,
  deviceForCommand,
  nativeCudaBackend,
  probeCuda,
  resolveDevice,
  setCudaBackend,
  type CudaBackend,
  type CudaProbe,
  type DeviceFlag,
} from '../../src/engine/cuda.js';

function probe(available: boolean, reason?: string): CudaProbe {
  return {
    available,
    ...(reason ? { reason } : {}),
    driverVersion: available ? 13000 : null,
    devices: available ? [{ index: 0, name: 'Fake H100', computeCapability: [9, 0], totalMemory: 80e9 }] : [],
    device: available ? 0 : null,
    nvrtcVersion: available ? '13.0' : null,
    nvrtcArchs: [],
    cublasLt: available,
    cublasLtVersion: null,
    libraries: {},
    errors: {},
  };
}
const yes = () => probe(true);
const no = () => probe(false, 'CUDA driver library libcuda.so.1 not found');

test('resolveDevice: cpu stays cpu, cuda needs CUDA (error names the reason), auto falls back to cpu', () => {
  let probed = 0;
  const counting = () => {
    probed++;
    return no();
  };
  assert.equal(resolveDevice('cpu', counting), 'cpu');
  assert.equal(probed, 0, 'cpu must not probe');
  assert.equal(resolveDevice('cuda', yes), 'cuda');
  assert.throws(() => resolveDevice('cuda', no), /--device cuda: CUDA is not available: CUDA driver library libcuda\.so\.1 not found/);
  assert.equal(resolveDevice('auto', yes), 'cuda');
  assert.equal(resolveDevice('auto', no), 'cpu');
  assert.throws(() => resolveDevice('gpu' as DeviceFlag, yes), /resolveDevice: device must be one of cpu, cuda, auto, got 'gpu'/);
});

test('deviceForCommand: a CPU-only command rejects cuda clearly and runs auto on the CPU', () => {
  assert.equal(deviceForCommand('eval', 'cpu', ['cpu'], no), 'cpu');
  assert.throws(() => deviceForCommand('eval', 'cuda', ['cpu'], no), /^Error: eval --device cuda: CUDA is not available: CUDA driver library libcuda\.so\.1/);
  assert.throws(() => deviceForCommand('block-ap', 'cuda', ['cpu'], yes), /block-ap --device cuda: not yet supported by block-ap/);
  assert.equal(deviceForCommand('eval', 'auto', ['cpu'], yes), 'cpu');
  assert.equal(deviceForCommand('eval', 'auto', ['cpu', 'cuda'], yes), 'cuda');
  assert.equal(deviceForCommand('eval', 'auto', ['cpu', 'cuda'], no), 'cpu');
  assert.equal(deviceForCommand('eval', 'cuda', ['cpu', 'cuda'], yes), 'cuda');
});

test('probeCuda never throws: a failing backend probe becomes the reason; cudaDevice throws it', () => {
  const broken = { ...nativeCudaBackend(), name: 'broken', probe: () => { throw new Error('addon built without cudaProbe'); } } as CudaBackend;
  setCudaBackend(broken);
  try {
    const p = probeCuda();
    assert.equal(p.available, false);
    assert.match(p.reason!, /cannot probe CUDA: addon built without cudaProbe/);
    assert.throws(() => cudaDevice(), /CUDA is not available: cannot probe CUDA/);
  } finally {
    setCudaBackend(null);
  }
});

test('probeCuda memoises until refresh; cudaDevice returns the selected device', () => {
  let calls = 0;
  const fake = { ...nativeCudaBackend(), name: 'fake', probe: () => (calls++, yes()) } as CudaBackend;
  setCudaBackend(fake);
  try {
    probeCuda();
    probeCuda();
    assert.equal(calls, 1);
    probeCuda({ refresh: true });
    assert.equal(calls, 2);
    assert.equal(cudaDevice().device.name, 'Fake H100');
  } finally {
    setCudaBackend(null);
  }
});
