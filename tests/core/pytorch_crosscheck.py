"""Independent plain-PyTorch implementation of moe-sweep's GPT, for tests/core/crosscheck_test.cpp.

Usage: python pytorch_crosscheck.py CASE_DIR [CASE_DIR ...]
Each CASE_DIR holds manifest.json (config as ConfigToJson writes it; tensors as raw little-endian
files with name/shape/dtype) written by the C++ test. This script rebuilds the model from those
tensors, computes the loss and the gradient of every parameter in fp32, and writes
result.json + raw float32 gradient files back into CASE_DIR.

Written for clarity, not speed: the experts run one (token, slot) assignment at a time and the
capacity ranks are counted in a Python loop, so that nothing is shared with the C++ code paths.
"""
import json, math, os, sys
import torch
import torch.nn.functional as F


def load(case, entry):
    dtype = {"float32": torch.float32, "int64": torch.int64}[entry["dtype"]]
    with open(os.path.join(case, entry["file"]), "rb") as f:
        data = bytearray(f.read())
    return torch.frombuffer(data, dtype=dtype).reshape(entry["shape"]).clone()


def rms(x):
    return F.rms_norm(x, (x.size(-1),))


def rope(x, cos, sin):  # x (B, T, H, hd); cos/sin (T, hd/2)
    d = x.shape[-1] // 2
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    x1, x2 = x[..., :d], x[..., d:]
    return torch.cat([x1 * c + x2 * s, -x1 * s + x2 * c], -1)


def attention(P, pre, x, m, cos, sin):
    B, T, C = x.shape
    H = m["n_head"]; KV = m["n_kv_head"] or H; hd = C // H
    qkv = (x @ P[pre + "qkv.weight"].T).view(B, T, H + 2 * KV, hd)
    q, k, v = qkv[:, :, :H], qkv[:, :, H:H + KV], qkv[:, :, H + KV:]
    q, k = rms(rope(q, cos, sin)), rms(rope(k, cos, sin))
    k = k.repeat_interleave(H // KV, dim=2); v = v.repeat_interleave(H // KV, dim=2)
    q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, H, T, hd)
    att = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
    mask = torch.ones(T, T, dtype=torch.bool).tril()
    att = att.masked_fill(~mask, float("-inf")).softmax(-1)
    y = (att @ v).transpose(1, 2).reshape(B, T, C)
    return y @ P[pre + "o.weight"].T


def mlp(P, pre, x, act):
    if act == "swiglu":
        return (F.silu(x @ P[pre + "gate.weight"].T) * (x @ P[pre + "up.weight"].T)) @ P[pre + "down.weight"].T
    return F.relu(x @ P[pre + "fc.weight"].T).square() @ P[pre + "proj.weight"].T


def moe(P, Bf, pre, x, m, e):
    Bsz, T, D = x.shape
    xf = x.reshape(-1, D); N = xf.size(0); E = e["n_experts"]; K = e["top_k"]
    logits = xf @ P[pre + "router.weight"].T
    if e["router"] == "softmax":
        scores = logits.softmax(-1); probs = scores
    else:
        scores = logits.sigmoid(); probs = scores / scores.sum(-1, keepdim=True)
    sel = scores.detach() + Bf[pre + "router_bias"]
    idx = sel.topk(K, -1).indices
    w = scores.gather(1, idx)
    if e["renormalize"]:
        w = w / w.sum(-1, keepdim=True)
    # capacity: slot-major priority (all first choices, in token order, then second choices ...)
    cap = math.ceil(N * K / E * e["capacity_factor"]) if e["capacity_factor"] > 0 else 0
    if cap: cap = max(cap, 1)
    keep = [[True] * K for _ in range(N)]
    seen = [0] * E
    for j in range(K):
        for n in range(N):
            ex = int(idx[n, j]); seen[ex] += 1
            if cap and seen[ex] > cap: keep[n][j] = False
    rows = []
    for n in range(N):
        acc = torch.zeros(D)
        for j in range(K):
            if not keep[n][j]: continue
            ex = int(idx[n, j]); xn = xf[n]
            a = xn @ P[pre + "w1"][ex]
            h = F.silu(a) * (xn @ P[pre + "w3"][ex]) if m["mlp"] == "swiglu" else F.relu(a).square()
            acc = acc + w[n, j] * (h @ P[pre + "w2"][ex])
        rows.append(acc)
    out = torch.stack(rows)
    for s in range(e["n_shared_experts"]):
        out = out + mlp(P, f"{pre}shared.{s}.", xf, m["mlp"])
    f = torch.bincount(idx.flatten(), minlength=E).float() / idx.numel()
    balance = E * (f * probs.mean(0)).sum()
    z = torch.logsumexp(logits, -1).square().mean()
    load = torch.bincount(idx.flatten(), minlength=E).float()
    dropped = sum(1 for n in range(N) for j in range(K) if not keep[n][j])
    return out.view(Bsz, T, D), balance, z, load, dropped


def run_case(case):
    man = json.load(open(os.path.join(case, "manifest.json")))
    m, e = man["config"]["model"], man["config"]["moe"]
    P = {p["name"]: load(case, p).requires_grad_() for p in man["params"]}
    Bf = {b["name"]: load(case, b) for b in man["buffers"]}
    idx, tgt = load(case, man["idx"]), load(case, man["targets"])
    T = idx.size(1); hd = m["n_embd"] // m["n_head"]
    inv = 1.0 / (m["rope_base"] ** (torch.arange(0, hd, 2).float() / hd))
    fr = torch.outer(torch.arange(m["seq_len"]).float(), inv)[:T]
    cos, sin = fr.cos(), fr.sin()

    x = rms(P["wte.weight"][idx])
    bals, zs, loads, dropped = [], [], torch.zeros(e["n_experts"]), 0
    for i in range(m["n_layer"]):
        pre = f"blocks.{i}."
        x = x + attention(P, pre + "attn.", rms(x), m, cos, sin)
        if m["moe"] and m["moe_freq"] > 0 and i % m["moe_freq"] == 0:
            y, b, z, l, d = moe(P, Bf, pre + "moe.", rms(x), m, e)
            bals.append(b); zs.append(z); loads += l; dropped += d
            x = x + y
        else:
            x = x + mlp(P, pre + "mlp.", rms(x), m["mlp"])
    logits = rms(x) @ P["lm_head.weight"].T
    ce = F.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1))
    bal = torch.stack(bals).mean() if bals else torch.zeros(())
    z = torch.stack(zs).mean() if zs else torch.zeros(())
    loss = ce + e["balance_coef"] * bal + e["z_loss_coef"] * z
    loss.backward()

    grads = []
    for name, p in P.items():
        g = p.grad if p.grad is not None else torch.zeros_like(p)
        fname = "grad_" + name.replace(".", "_") + ".f32"
        with open(os.path.join(case, fname), "wb") as f:
            f.write(bytes(g.detach().contiguous().float().flatten().view(torch.uint8).tolist()))  # no numpy needed
        grads.append({"name": name, "file": fname, "shape": list(g.shape), "dtype": "float32"})
    res = {"loss": loss.item(), "ce_loss": ce.item(), "balance_loss": bal.item(), "z_loss": z.item(),
           "expert_load": loads.tolist(), "dropped": dropped, "grads": grads}
    json.dump(res, open(os.path.join(case, "result.json"), "w"))


if __name__ == "__main__":
    torch.set_num_threads(2)
    for case in sys.argv[1:]:
        run_case(case)
