"""Training-step time and saved activations of the emitted GPT against one written by hand.

    python benchmarks/bench_gpt.py [--width 512] [--blocks 4] [--tokens 256] [--batch 8]
                                   [--vocab 64] [--rounds 5] [--build]

examples/gpt.tp (pre-LN decoder, tied embedding, causal attention, 4 heads) emitted by tensorprog,
against a nanoGPT-style model of the same shape written here (fused qkv, SDPA, nn.LayerNorm),
each stepped with AdamW (forward, backward, step). The versions run interleaved, round after
round, and the table gives medians over rounds. Memory: the bytes autograd saves for backward in
one forward (counted with saved_tensors_hooks, storages counted once): params and optimizer
state are the same in both, so this is where the peaks differ. --build also times building a
1.4B-param model (24 blocks, width 2048) on the meta device and in memory.
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

import tensorprog as tp
from tensorprog.codegen import emit, parametrization
from tensorprog.coordcheck import load_module
from tensorprog.optimizers import OPTIMIZERS

ROOT = Path(__file__).resolve().parent.parent


def emitted_module(tokens: int, vocab: int):
    text = (ROOT / "examples" / "gpt.tp").read_text()
    text = text.replace("dim V = 64 ", f"dim V = {vocab} ").replace("dim T = 4 ",
                                                                     f"dim T = {tokens} ")
    program = tp.parse(text, "gpt.tp")
    abc, label = parametrization(program, OPTIMIZERS["adam"], "mup")
    return load_module(emit(program, abc, optimizer="adam", label=label, command="bench"),
                       "gpt_bench")


class Block(torch.nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv = torch.nn.Linear(d, 3 * d, bias=False)
        self.proj = torch.nn.Linear(d, d, bias=False)
        self.fc = torch.nn.Linear(d, 4 * d, bias=False)
        self.out = torch.nn.Linear(4 * d, d, bias=False)

    def forward(self, x, scale):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, scale=scale, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class HandGPT(torch.nn.Module):
    """nanoGPT's shape: token and position embeddings, pre-LN blocks, tied unembedding."""

    def __init__(self, d: int, blocks: int, tokens: int, vocab: int):
        super().__init__()
        self.wte = torch.nn.Embedding(vocab, d)
        self.wpe = torch.nn.Embedding(tokens, d)
        self.blocks = torch.nn.ModuleList(Block(d, 4) for _ in range(blocks))
        self.ln = torch.nn.LayerNorm(d)
        self.scale = 1 / math.sqrt(d // 4)

    def forward(self, tok):
        x = self.wte(tok) + self.wpe(torch.arange(tok.shape[-1], device=tok.device))
        for block in self.blocks:
            x = block(x, self.scale)
        return F.linear(self.ln(x), self.wte.weight)


def saved_bytes(model, tok) -> int:
    seen: dict[int, int] = {}

    def pack(t):
        s = t.untyped_storage()
        seen[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(tok).flatten(0, 1), tok.flatten())
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    del loss
    return sum(n for ptr, n in seen.items() if ptr not in params)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--build", action="store_true")
    args = ap.parse_args()
    torch.manual_seed(0)
    gpt = emitted_module(args.tokens, args.vocab)
    models = {"emitted": gpt.Model(args.width, args.blocks),
              "hand-written": HandGPT(args.width, args.blocks, args.tokens, args.vocab)}
    opts = {"emitted": torch.optim.AdamW(gpt.param_groups(models["emitted"], 1e-4), lr=1e-4),
            "hand-written": torch.optim.AdamW(models["hand-written"].parameters(), lr=1e-4)}
    tok = torch.randint(0, args.vocab, (args.batch, args.tokens))
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(args.rounds + 1):  # the first round warms up
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = F.cross_entropy(model(tok).flatten(0, 1), tok.flatten())
                opts[name].zero_grad()
                loss.backward()
                opts[name].step()
            times[name].append((time.perf_counter() - start) / args.steps)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; width {args.width}, {args.blocks} blocks, "
          f"{args.tokens} tokens, batch {args.batch}, vocab {args.vocab}")
    hand_t = statistics.median(times["hand-written"][1:])
    hand_m = saved_bytes(models["hand-written"], tok)
    print("| model | step (ms) | × hand | saved for backward (MiB) | × hand | groups |")
    print("|---|---|---|---|---|---|")
    for name, model in models.items():
        t = statistics.median(times[name][1:])
        m = saved_bytes(model, tok)
        print(f"| {name} | {1e3 * t:.0f} | {t / hand_t:.2f} | {m / 2**20:.0f} | "
              f"{m / hand_m:.2f} | {len(opts[name].param_groups)} |")
    if args.build:
        big = emitted_module(1024, 50304)
        for device in ("meta", "cpu"):
            start = time.perf_counter()
            model = big.Model(2048, 24, device=device)
            took = time.perf_counter() - start
            count = sum(p.numel() for p in model.parameters())
            print(f"build {count / 1e9:.2f}B params on {device}: {took:.2f} s")
            del model


if __name__ == "__main__":
    main()
