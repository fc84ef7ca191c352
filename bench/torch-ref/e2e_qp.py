# E2E-QP in plain PyTorch, as a cross-check of `eqat e2e-qp`: the official recipe (step sizes
# only, AdamW beta (0.9, 0.999), eps 1e-8, weight decay 0, cosine with ceil(warmup * steps)
# linear warmup steps as transformers' scheduler, global-norm clip, the loss averaged over the
# accumulated micro-batches) on an eqat quantized checkpoint and the windows dump-windows.js
# wrote, in f32. Prints one JSON line per optimizer step (the fields of eqat's e2e-qp-log.jsonl)
# and the test perplexity before and after.
#
# usage: python3 e2e_qp.py --model QUANT_DIR --windows DUMP_DIR [--lr 2e-5] [--warmup 0.03]
#          [--clip 0.3] [--batch 32] [--micro-batch 4] [--threads 2]
import argparse, json, math, os, sys, time
import torch
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from eqat_ref import BLOCK_LINEARS, Llama, perplexity, read_dir, read_windows, unpack_bits

ap = argparse.ArgumentParser()
ap.add_argument('--model', required=True)
ap.add_argument('--windows', required=True)
ap.add_argument('--lr', type=float, default=2e-5)
ap.add_argument('--warmup', type=float, default=0.03)
ap.add_argument('--clip', type=float, default=0.3)
ap.add_argument('--batch', type=int, default=32)
ap.add_argument('--micro-batch', type=int, default=4)
ap.add_argument('--threads', type=int, default=2)
args = ap.parse_args()
torch.set_num_threads(args.threads)

meta = json.load(open(os.path.join(args.windows, 'windows.json')))
T = meta['seqlen']
config = json.load(open(os.path.join(args.model, 'config.json')))
qc = json.load(open(os.path.join(args.model, 'quantize_config.json')))
bits, G = qc['bits'], qc['group_size']
net = Llama(config, T)
t = read_dir(args.model)

# per linear: integer weights q (O, I), integer zero points z (O, I/G), trainable f32 step sizes s (O, I/G)
layers, scales = [], []
for i in range(net.L):
    p = f'model.layers.{i}.'
    layer = {'ln1': torch.tensor(t[p + 'input_layernorm.weight']), 'ln2': torch.tensor(t[p + 'post_attention_layernorm.weight'])}
    for name in BLOCK_LINEARS:
        s = t[p + name + '.scales']                      # (I/G, O)
        groups, O = s.shape
        q = unpack_bits(t[p + name + '.qweight'].T, groups * G, bits)   # qweight (I·b/32, O) -> (O, I)
        z = unpack_bits(t[p + name + '.qzeros'], O, bits).T             # qzeros (I/G, O·b/32) -> (O, I/G)
        step = torch.nn.Parameter(torch.tensor(s.T.copy()))
        layer[name] = (torch.tensor(q, dtype=torch.float32), torch.tensor(z, dtype=torch.float32), step)
        scales.append(step)
    layers.append(layer)
embed = torch.tensor(t['model.embed_tokens.weight'])
lm_head = torch.tensor(t['lm_head.weight'])
final_norm = torch.tensor(t['model.norm.weight'])


def dequant(q, z, s):  # W = (q - z)·s, groups of G along the input dimension
    return (q - z.repeat_interleave(G, 1)) * s.repeat_interleave(G, 1)


def logits(ids):  # (B, T) -> (B, T, V)
    h = embed[ids]
    for layer in layers:
        h = net.block(h, {n: dequant(*layer[n]) for n in BLOCK_LINEARS}, layer['ln1'], layer['ln2'])
    return net.rmsnorm(h, final_norm) @ lm_head.T


evalw = read_windows(os.path.join(args.windows, 'eval.i32'), T)
print(json.dumps({'ppl_before': perplexity(logits, evalw)}), flush=True)

train = read_windows(os.path.join(args.windows, 'e2e-qp-train.i32'), T)
accum = args.batch // args.micro_batch
steps = train.shape[0] // args.batch
warmup = math.ceil(args.warmup * steps)
opt = torch.optim.AdamW(scales, lr=args.lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)


def schedule(step):  # transformers' get_cosine_schedule_with_warmup
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, steps - warmup)
    return max(0.0, 0.5 * (1 + math.cos(math.pi * progress)))


sched = torch.optim.lr_scheduler.LambdaLR(opt, schedule)
for step in range(steps):
    t0 = time.time()
    opt.zero_grad()
    loss_sum = 0.0
    for a in range(accum):
        ids = train[step * args.batch + a * args.micro_batch: step * args.batch + (a + 1) * args.micro_batch]
        lg = logits(ids)
        loss = torch.nn.functional.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), ids[:, 1:].reshape(-1)) / accum
        loss.backward()
        loss_sum += loss.item()
    norm = torch.nn.utils.clip_grad_norm_(scales, args.clip) if args.clip > 0 else torch.sqrt(sum((s.grad ** 2).sum() for s in scales))
    lr = opt.param_groups[0]['lr']
    opt.step()
    sched.step()
    print(json.dumps({'step': step + 1, 'loss': loss_sum, 'lr': lr, 'gradNorm': norm.item(), 'seconds': round(time.time() - t0, 2)}), flush=True)
print(json.dumps({'ppl_after': perplexity(logits, evalw)}), flush=True)
