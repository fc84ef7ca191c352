# Shared pieces of the PyTorch cross-check scripts (block_ap.py, e2e_qp.py): safetensors I/O,
# the GPTQ bitstream packing, a Llama decoder block written out op by op, and the test-set
# perplexity. Written from the Hugging Face Llama definition and the EfficientQAT paper, in
# plain PyTorch (CPU is enough for llama-small), independent of eqat's code: the two agree only
# if both follow the recipe.
import json, math, os, struct
import numpy as np
import torch

BLOCK_LINEARS = ['self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj',
                 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj']


def read_safetensors(path):
    """name -> float32 / int32 numpy array (F32, F16, BF16, I32)."""
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, v in header.items():
        if name == '__metadata__':
            continue
        a, b = v['data_offsets']
        raw, dt = data[a:b], v['dtype']
        if dt == 'F32': t = np.frombuffer(raw, np.float32)
        elif dt == 'F16': t = np.frombuffer(raw, np.float16).astype(np.float32)
        elif dt == 'BF16': t = (np.frombuffer(raw, np.uint16).astype(np.uint32) << 16).view(np.float32)
        elif dt == 'I32': t = np.frombuffer(raw, np.int32)
        else: raise ValueError(f'{path}: tensor {name} has unsupported dtype {dt}')
        out[name] = t.reshape(v['shape']).copy()
    return out


def read_dir(d):
    """Every tensor of every *.safetensors file in d."""
    tensors = {}
    for fn in sorted(os.listdir(d)):
        if fn.endswith('.safetensors'):
            tensors.update(read_safetensors(os.path.join(d, fn)))
    return tensors


def write_safetensors(path, tensors):
    """tensors: name -> (dtype string, numpy array already of that dtype)."""
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        dt, arr = tensors[name]
        b = np.ascontiguousarray(arr).tobytes()
        header[name] = {'dtype': dt, 'shape': list(arr.shape), 'data_offsets': [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    h = json.dumps(header).encode()
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def unpack_bits(words, count, bits):
    """(..., nwords) int32 little-endian bitstream -> (..., count) int64 values of `bits` bits.
    This is GPTQ's layout for every width: 2/4/8 bits never straddle a word, 3 bits do (96-bit packing)."""
    w = words.astype(np.uint32).astype(np.uint64)
    w = np.concatenate([w, np.zeros(w.shape[:-1] + (1,), np.uint64)], -1)
    bit = np.arange(count) * bits
    lo, off = bit // 32, (bit % 32).astype(np.uint64)
    v = ((w[..., lo] | (w[..., lo + 1] << np.uint64(32))) >> off) & np.uint64((1 << bits) - 1)
    return v.astype(np.int64)


def pack_bits(values, bits, nwords):
    """Inverse of unpack_bits: (..., count) values in [0, 2^bits) -> (..., nwords) int32."""
    v = values.astype(np.uint64)
    w = np.zeros(v.shape[:-1] + (nwords + 1,), np.uint64)
    for k in range(v.shape[-1]):
        lo, off = (k * bits) // 32, (k * bits) % 32
        x = v[..., k] << np.uint64(off)
        w[..., lo] |= x & np.uint64(0xFFFFFFFF)
        w[..., lo + 1] |= x >> np.uint64(32)
    return w[..., :nwords].astype(np.uint32).view(np.int32)


def read_windows(path, seqlen):
    """A dump-windows.js file -> (count, seqlen) int64 token ids."""
    return torch.tensor(np.fromfile(path, np.int32).astype(np.int64)).view(-1, seqlen)


class HalfRound(torch.autograd.Function):
    """Emulates an f16 tensor under CUDA autocast on a CPU in f32: the value is rounded to f16 on
    the way forward, and its gradient, times the loss scale, on the way back (GradScaler's view)."""
    loss_scale = 65536.0

    @staticmethod
    def forward(ctx, x):
        return x.half().float()

    @staticmethod
    def backward(ctx, g):
        return (g * HalfRound.loss_scale).half().float() / HalfRound.loss_scale


def identity(x): return x


class Llama:
    """Shapes and the pieces of the forward that do not depend on the weights' form. `cast` is
    applied wherever f16 autocast would leave an f16 tensor (identity: plain f32)."""

    def __init__(self, config, seqlen, cast=identity):
        self.cast = cast
        self.L = config['num_hidden_layers']
        self.C = config['hidden_size']
        self.H = config['num_attention_heads']
        self.Hkv = config['num_key_value_heads']
        self.D = config.get('head_dim') or self.C // self.H
        self.eps = config['rms_norm_eps']
        theta = (config.get('rope_parameters') or {}).get('rope_theta', config.get('rope_theta', 10000.0))
        inv = 1.0 / (theta ** (torch.arange(0, self.D, 2, dtype=torch.float32) / self.D))
        ang = torch.outer(torch.arange(seqlen, dtype=torch.float32), inv)
        ang = torch.cat([ang, ang], -1)  # (T, D) in Hugging Face's rotate_half layout
        self.cos, self.sin = ang.cos(), ang.sin()
        self.mask = torch.full((seqlen, seqlen), float('-inf')).triu(1)  # (T, T) causal

    def rmsnorm(self, x, w):
        return self.cast(x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)) * w

    def rope(self, x):  # (B, heads, T, D)
        half, c = self.D // 2, self.cast
        return c(c(x * c(self.cos)) + c(torch.cat([-x[..., half:], x[..., :half]], -1) * c(self.sin)))

    def linear(self, x, w):  # x (..., I), w (O, I) -> (..., O)
        return self.cast(self.cast(x) @ self.cast(w).T)

    def block(self, h, W, ln1, ln2):
        """h (B, T, C); W: linear name -> (O, I) weight; ln1/ln2 (C,) norm weights."""
        B, T, _ = h.shape
        H, Hkv, D = self.H, self.Hkv, self.D
        lin, c = self.linear, self.cast
        x = self.rmsnorm(h, ln1)
        q = lin(x, W['self_attn.q_proj']).view(B, T, H, D).transpose(1, 2)      # (B, H, T, D)
        k = lin(x, W['self_attn.k_proj']).view(B, T, Hkv, D).transpose(1, 2)    # (B, Hkv, T, D)
        v = lin(x, W['self_attn.v_proj']).view(B, T, Hkv, D).transpose(1, 2)
        q, k = self.rope(q), self.rope(k)
        k, v = k.repeat_interleave(H // Hkv, 1), v.repeat_interleave(H // Hkv, 1)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D) + self.mask[:T, :T], -1)  # (B, H, T, T)
        h = c(h + lin(c(att @ v).transpose(1, 2).reshape(B, T, H * D), W['self_attn.o_proj']))
        x = self.rmsnorm(h, ln2)
        mlp = c(c(torch.nn.functional.silu(lin(x, W['mlp.gate_proj']))) * lin(x, W['mlp.up_proj']))
        return c(h + lin(mlp, W['mlp.down_proj']))


def perplexity(logits_fn, windows, batch=8):
    """exp(mean next-token NLL) over (count, T) windows, T - 1 predictions each (eqat eval's protocol)."""
    total = 0.0
    with torch.no_grad():
        for i in range(0, windows.shape[0], batch):
            w = windows[i:i + batch]
            lg = logits_fn(w)
            total += torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), w[:, 1:].reshape(-1)).item() * w.shape[0]
    return math.exp(total / windows.shape[0])
