// Device selection without a GPU: resolveDevice and deviceForCommand against fake probes,
// probeCuda / cudaDevice over a backend whose probe fails or reports no CUDA, and the
// DeviceArray helpers over the emulator's host-memory device.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  allocDevice,
  cudaDevice,
  deviceForCommand,
  deviceView,
  downloadDevice,
  freeDevice,
  toDevice,
  uploadDevice,
  zeroDevice,
  nativeCudaBackend,
  probeCuda,
  resolveDevice,
  setCudaBackend,
  type CudaBackend,
  type CudaProbe,
  type DeviceFlag,
} from '../../src/engine/cuda.js';
import { EmulatorBackend } from './emu/backend.js';

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

test('deviceForCommand: the command names the error; auto follows the probe', () => {
  assert.equal(deviceForCommand('eval', 'cpu', no), 'cpu');
  assert.throws(() => deviceForCommand('eval', 'cuda', no), /^Error: eval --device cuda: CUDA is not available: CUDA driver library libcuda\.so\.1/);
  assert.equal(deviceForCommand('eval', 'auto', yes), 'cuda');
  assert.equal(deviceForCommand('eval', 'auto', no), 'cpu');
  assert.equal(deviceForCommand('block-ap', 'cuda', yes), 'cuda');
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

test('DeviceArray helpers: views, dtype checks, zero-length arrays, no leak on a failed upload', () => {
  const mem = new EmulatorBackend(''); // memory only: no kernels are launched here
  setCudaBackend(mem);
  try {
    const a = toDevice(new Float32Array([1, 2, 3, 4, 5]));
    assert.deepEqual([a.dtype, a.length, a.bytes, a.owner], ['f32', 5, 20, true]);
    const v = deviceView(a, 1, 3);
    assert.deepEqual([v.handle - a.handle, v.length, v.bytes, v.owner], [4n, 3, 12, false]);
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(v)), [2, 3, 4]);
    uploadDevice(a, new Float32Array([9, 8]), 3);
    assert.deepEqual(Array.from(downloadDevice<Float32Array>(a)), [1, 2, 3, 9, 8]);
    assert.throws(() => uploadDevice(a, new Float32Array(3), 3), /uploadDevice: 3 elements at offset 3 do not fit the device array of 5/);
    assert.throws(() => uploadDevice(a, new Int32Array(2)), /uploadDevice: a f32 device array needs a Float32Array/);
    assert.throws(() => deviceView(a, 4, 2), /deviceView: range \[4, 6\) is outside the array of 5 elements/);
    assert.throws(() => freeDevice(v), /freeDevice: argument is a view/);
    assert.throws(() => toDevice(new Uint16Array(2)), /toDevice: a Uint16Array needs an explicit dtype/);
    assert.throws(() => toDevice(new Float32Array(2), 'bf16'), /toDevice: a bf16 device array needs a Uint16Array/);
    assert.equal(mem.liveAllocations, 1, 'a rejected upload allocates nothing');
    const h = toDevice(new Uint16Array([1, 2]), 'bf16');
    assert.deepEqual([h.bytes, Array.from(downloadDevice<Uint16Array>(h))], [4, [1, 2]]);
    zeroDevice(h);
    assert.deepEqual(Array.from(downloadDevice<Uint16Array>(h)), [0, 0]);
    const empty = allocDevice('f32', 0);
    assert.equal(empty.handle, 0n);
    assert.equal(downloadDevice<Float32Array>(empty).length, 0);
    freeDevice(empty);
    freeDevice(h);
    freeDevice(a);
    assert.equal(mem.liveAllocations, 0);
  } finally {
    setCudaBackend(null);
    mem.dispose();
  }
});
