# examples/hf_gpt2_mup.py: µP for a Hugging Face GPT-2 nobody rewrote, and a small µTransfer sweep.
#
# The model is traced from its config at two widths (on the meta device), its µP derived and
# applied in place (init, per-param LR groups, forward patches for the fused query and the tied
# unembedding), then trained at several widths over a grid of learning rates on CPython's pydoc
# topics by character (no download). Under µP the best learning rate stays put as the width
# grows; as the model comes (SP, one LR for all) it drifts. Run:
#
#     python examples/hf_gpt2_mup.py                    # widths 64,128,256, 7 LRs, 150 steps
#     python examples/hf_gpt2_mup.py --widths 64,128 --lrs 0.001,0.01 --steps 20
from __future__ import annotations

import argparse
import math

import torch
import transformers

import tensorprog as tp
from tensorprog.numerics.data import load

SEQ = 32


def gpt2(width: int, vocab: int, layers: int = 2):
    """GPT2LMHeadModel at a width, 4 heads, dropout off (it would blur the comparison)."""
    cfg = transformers.GPT2Config(
        n_embd=width,
        n_layer=layers,
        n_head=4,
        vocab_size=vocab,
        n_positions=SEQ,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(cfg)


def train(model, groups, data, steps: int, batch: int, seed: int) -> float:
    """AdamW on next-character prediction; the mean loss over the last quarter of the steps."""
    opt = torch.optim.AdamW(groups, weight_decay=0.0)
    g = torch.Generator().manual_seed(seed)
    losses = []
    for _ in range(steps):
        x, y = data.batch(batch, g, SEQ)
        loss = torch.nn.functional.cross_entropy(model(x).logits.flatten(0, 1), y.flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    tail = losses[-max(1, steps // 4) :]
    return sum(tail) / len(tail) if all(map(math.isfinite, tail)) else math.inf


def sweep(widths, lrs, steps: int, batch: int = 16, layers: int = 2, seed: int = 0) -> dict:
    """{(param, width, lr): loss} for param in ("mup", "sp")."""
    data = load("text")

    def build(n):
        return gpt2(n, data.vocab, layers)

    def tokens(model):
        return (torch.zeros(2, SEQ, dtype=torch.long),)

    traced = tp.from_torch(build, widths=(widths[0], 2 * widths[0]), example_inputs=tokens)
    mup = tp.MuP(traced, "adamw")
    losses = {}
    for width in widths:
        for lr in lrs:
            for param in ("mup", "sp"):
                torch.manual_seed(seed)
                model = build(width)
                if param == "mup":
                    mup.apply(model)  # the base width keeps the model's own init
                    groups = mup.param_groups(model, lr=lr)
                else:
                    groups = [{"params": list(model.parameters()), "lr": lr}]
                losses[(param, width, lr)] = train(model, groups, data, steps, batch, seed)
    return losses


def table(losses: dict, widths, lrs) -> str:
    lines = []
    for param in ("mup", "sp"):
        lines.append(f"{param}: loss after training, per width (rows) and learning rate")
        lines.append("width  " + " ".join(f"{lr:>8.2g}" for lr in lrs) + "   best lr")
        for w in widths:
            row = [losses[(param, w, lr)] for lr in lrs]
            best = lrs[min(range(len(lrs)), key=row.__getitem__)]
            lines.append(f"{w:>5}  " + " ".join(f"{v:8.3f}" for v in row) + f"   {best:.2g}")
    return "\n".join(lines)


def main(argv=None) -> str:
    ap = argparse.ArgumentParser(description="µP for HF GPT-2 and a small µTransfer sweep")
    ap.add_argument("--widths", default="64,128,256")
    ap.add_argument("--lrs", default="0.0005,0.001,0.002,0.004,0.008,0.016,0.032")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--layers", type=int, default=2)
    args = ap.parse_args(argv)
    widths = [int(w) for w in args.widths.split(",")]
    lrs = [float(v) for v in args.lrs.split(",")]
    out = table(sweep(widths, lrs, args.steps, layers=args.layers), widths, lrs)
    print(out)
    return out


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
