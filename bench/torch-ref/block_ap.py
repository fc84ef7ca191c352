# Block-AP in plain PyTorch, as a cross-check of `eqat block-ap`, following the official
# block_ap.py: per block, targets from the full-precision block on full-precision inputs,
# min-max init of step sizes and zero points, AdamW (weight decay 0) with {s, z} at quant_lr and
# {linear weights, norms} at weight_lr, each on CosineAnnealingLR to lr/20 whose value is read
# with get_lr() after step() as the official loop does, MSE loss, the straight-through rounding
# of W/s and of z; then s -> f16, z -> integer, q = clamp(round(W/s) + z) and the quantized
# block's output becomes the next block's input. In f32 on eqat's windows (dump-windows.js).
# --amp-fp16 emulates the official run's precision: CUDA fp16 autocast (every matmul input and
# output, the residual stream and the activations rounded to f16; norms, the fake quantization
# and the loss in f32), f16 caches of block inputs and targets, GradScaler's loss scale (a step
# whose gradient overflows is skipped and the scale halved), and a block cast to f16 at the freeze.
# Writes an eqat-layout checkpoint (GPTQ v2 tensors) that `eqat eval` and `eqat e2e-qp` read.
#
# usage: python3 block_ap.py --model HF_DIR --windows DUMP_DIR --template QUANT_DIR --out DIR
#          [--wbits 2] [--group-size 64] [--epochs 2] [--batch 2] [--threads 2] [--amp-fp16]
# --template: any eqat checkpoint of the same model and layout; its files (config, tokenizer,
# head shard) are copied and its block shards rewritten with this run's tensors.
import argparse, json, os, shutil, sys, time, warnings
import numpy as np
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eqat_ref import BLOCK_LINEARS, HalfRound, Llama, identity, pack_bits, read_dir, read_windows, write_safetensors

ap = argparse.ArgumentParser()
ap.add_argument('--model', required=True)
ap.add_argument('--windows', required=True)
ap.add_argument('--template', required=True)
ap.add_argument('--out', required=True)
ap.add_argument('--wbits', type=int, default=2)
ap.add_argument('--group-size', type=int, default=64)
ap.add_argument('--epochs', type=int, default=2)
ap.add_argument('--batch', type=int, default=2)
ap.add_argument('--threads', type=int, default=2)
ap.add_argument('--amp-fp16', action='store_true')
args = ap.parse_args()
torch.set_num_threads(args.threads)
warnings.filterwarnings('ignore', message='To get the last learning rate')  # the official get_lr() use

bits, G = args.wbits, args.group_size
qmax = 2 ** bits - 1
quant_lr, weight_lr, min_lr_factor = 1e-4, (2e-5 if bits == 2 else 1e-5), 20
T = json.load(open(os.path.join(args.windows, 'windows.json')))['seqlen']
config = json.load(open(os.path.join(args.model, 'config.json')))
amp = args.amp_fp16
net = Llama(config, T, HalfRound.apply if amp else identity)
to_cache = net.cast  # the official caches are f16 (identity in f32)
src = read_dir(args.model)  # one file or shards
train = read_windows(os.path.join(args.windows, 'block-ap-train.i32'), T)
val = read_windows(os.path.join(args.windows, 'block-ap-val.i32'), T)


def round_ste(x): return (x.round() - x).detach() + x
def clamp_ste(x, lo, hi): return (x.clamp(lo, hi) - x).detach() + x


def fake_quant(w, scale, zero):  # w (O, I); scale, zero (O·I/G, 1)
    s = clamp_ste(scale, 1e-4, 1e4)
    z = clamp_ste(round_ste(zero), 0, qmax)
    x = (round_ste(w.reshape(-1, G) / s) + z).clamp(0, qmax)
    return ((x - z) * s).reshape(w.shape)


def map_batches(x, fn, batch=8):  # x (N, T, C) replaced by fn(x) in place
    with torch.no_grad():
        for i in range(0, x.shape[0], batch):
            x[i:i + batch] = to_cache(fn(x[i:i + batch]))


embed = torch.tensor(src['model.embed_tokens.weight'])
with torch.no_grad():
    fp_train, fp_val = to_cache(embed[train]), to_cache(embed[val])  # (N, T, C): inputs, then targets, of the fp blocks
q_train, q_val = fp_train.clone(), fp_val.clone()    # inputs of the quantized blocks
tensors, t_start = {}, time.time()
for li in range(net.L):
    p = f'model.layers.{li}.'
    w_fp = {n: torch.tensor(src[p + n + '.weight']) for n in BLOCK_LINEARS}
    ln1_fp, ln2_fp = torch.tensor(src[p + 'input_layernorm.weight']), torch.tensor(src[p + 'post_attention_layernorm.weight'])
    map_batches(fp_train, lambda x: net.block(x, w_fp, ln1_fp, ln2_fp))
    map_batches(fp_val, lambda x: net.block(x, w_fp, ln1_fp, ln2_fp))

    HalfRound.loss_scale = 65536.0  # the official loop makes a new GradScaler per block
    W = {n: torch.nn.Parameter(w_fp[n].clone()) for n in BLOCK_LINEARS}
    ln1, ln2 = torch.nn.Parameter(ln1_fp.clone()), torch.nn.Parameter(ln2_fp.clone())
    S, Z = {}, {}
    for n in BLOCK_LINEARS:  # min-max init
        x = W[n].detach().reshape(-1, G)
        s = ((x.amax(-1, keepdim=True) - x.amin(-1, keepdim=True)) / qmax).clamp(1e-4, 1e4)
        S[n] = torch.nn.Parameter(s)
        Z[n] = torch.nn.Parameter((-(x.amin(-1, keepdim=True) / s).clamp(-1e4, 1e4)).round())
    iterations = args.epochs * train.shape[0] / args.batch
    opt = torch.optim.AdamW([{'params': [t for n in BLOCK_LINEARS for t in (S[n], Z[n])], 'lr': quant_lr},
                             {'params': [W[n] for n in BLOCK_LINEARS] + [ln1, ln2], 'lr': weight_lr}], weight_decay=0)
    # the official loop's schedules: CosineAnnealingLR on placeholder optimizers, read with get_lr()
    clocks = []
    for lr in (quant_lr, weight_lr):
        holder = torch.optim.AdamW([torch.zeros(1, requires_grad=True)], lr=lr)
        clocks.append(torch.optim.lr_scheduler.CosineAnnealingLR(holder, T_max=iterations, eta_min=lr / min_lr_factor))

    def qblock(x):
        return net.block(x, {n: fake_quant(W[n], S[n], Z[n]) for n in BLOCK_LINEARS}, ln1, ln2)

    for epoch in range(args.epochs):
        t0, losses, skipped = time.time(), [], 0
        for b in range(0, train.shape[0], args.batch):
            loss = torch.nn.functional.mse_loss(qblock(q_train[b:b + args.batch]), fp_train[b:b + args.batch])
            opt.zero_grad()
            if amp:  # GradScaler: scaled backward, unscale, skip the step on overflow
                (loss * HalfRound.loss_scale).backward()
                grads = [t.grad for g in opt.param_groups for t in g['params']]
                for gr in grads:
                    gr /= HalfRound.loss_scale
                if all(torch.isfinite(gr).all() for gr in grads):
                    opt.step()
                else:
                    HalfRound.loss_scale /= 2
                    skipped += 1
            else:
                loss.backward()
                opt.step()
            losses.append(loss.item())
            for g, clock in enumerate(clocks):
                clock.step()
                opt.param_groups[g]['lr'] = clock.get_lr()[0]
        with torch.no_grad():
            vl = np.mean([torch.nn.functional.mse_loss(qblock(q_val[b:b + args.batch]), fp_val[b:b + args.batch]).item()
                          for b in range(0, val.shape[0], args.batch)])
        print(json.dumps({'block': li, 'epoch': epoch + 1, 'trainLoss': float(np.mean(losses)), 'valLoss': float(vl),
                          'seconds': round(time.time() - t0, 1),
                          **({'skippedSteps': skipped, 'lossScale': HalfRound.loss_scale} if amp else {})}), flush=True)

    with torch.no_grad():  # freeze: f16 step sizes, integer zero points, integers on that grid
        frozen = {}
        if amp:  # qlayer.half() before quant_inplace
            for t in [W[n] for n in BLOCK_LINEARS] + [ln1, ln2]:
                t.copy_(net.cast(t))
        for n in BLOCK_LINEARS:
            O, I = W[n].shape
            s16 = S[n].clamp(1e-4, 1e4).half().float()                           # (O·I/G, 1)
            z = Z[n].round().clamp(0, qmax)
            q = (torch.round(W[n].reshape(-1, G) / s16) + z).clamp(0, qmax)     # (O·I/G, G)
            frozen[n] = ((q - z) * s16).reshape(O, I)
            qi, zi = q.reshape(O, I).numpy().astype(np.int64), z.reshape(O, I // G).numpy().astype(np.int64)
            tensors[p + n + '.qweight'] = ('I32', pack_bits(qi, bits, I * bits // 32).T)    # (I·b/32, O)
            tensors[p + n + '.qzeros'] = ('I32', pack_bits(zi.T, bits, O * bits // 32))    # (I/G, O·b/32)
            tensors[p + n + '.scales'] = ('F16', s16.reshape(O, I // G).numpy().T.astype(np.float16))
            tensors[p + n + '.g_idx'] = ('I32', (np.arange(I) // G).astype(np.int32))
        tensors[p + 'input_layernorm.weight'] = ('F32', ln1.detach().numpy())
        tensors[p + 'post_attention_layernorm.weight'] = ('F32', ln2.detach().numpy())
        map_batches(q_train, lambda x: net.block(x, frozen, ln1, ln2))
        map_batches(q_val, lambda x: net.block(x, frozen, ln1, ln2))
    print(json.dumps({'block': li, 'done_seconds': round(time.time() - t_start)}), flush=True)

# the checkpoint: the template's files, its block shards rewritten with this run's tensors
if os.path.exists(args.out):
    shutil.rmtree(args.out)
shutil.copytree(args.template, args.out)
for fn in ('eqat-recipe.json', 'block-ap-log.jsonl', 'e2e-qp-log.jsonl'):
    if os.path.exists(os.path.join(args.out, fn)):
        os.remove(os.path.join(args.out, fn))
shards = {}
for name, fn in json.load(open(os.path.join(args.template, 'model.safetensors.index.json')))['weight_map'].items():
    shards.setdefault(fn, []).append(name)
for fn, names in shards.items():
    if all(n in tensors for n in names):
        write_safetensors(os.path.join(args.out, fn), {n: tensors[n] for n in names})
    elif any(n in tensors for n in names):
        sys.exit(f'{args.template}/{fn}: mixes block tensors with others; not an eqat checkpoint layout')
print(json.dumps({'written': args.out}), flush=True)
