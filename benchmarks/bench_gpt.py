"""Training-step time and saved activations of the emitted GPT against one written by hand
and the mup package's version.

    python benchmarks/bench_gpt.py [--width 512] [--blocks 4] [--tokens 256] [--batch 8]
                                   [--vocab 64] [--rounds 5] [--build] [--device cuda]
                                   [--autocast bf16] [--flash] [--compile]

examples/gpt.tp (pre-LN decoder, tied embedding, causal attention, 4 heads) emitted by tensorprog,
against a nanoGPT-style model of the same shape written here (fused qkv, SDPA, nn.LayerNorm),
and the same model made µP with the mup package (MuSharedReadout for the tied unembedding,
attention 1/d_head, set_base_shapes from base and delta models, MuAdamW), each stepped with
AdamW (forward, backward, step). The versions run interleaved, round after round, and the table
gives medians over rounds. Memory: the bytes autograd saves for backward in one forward (counted
with saved_tensors_hooks, storages counted once): params and optimizer state are the same in
all, so this is where the peaks differ. --build also times building a 1.4B-param model (24
blocks, width 2048): the emitted one on the meta device and in memory, mup's in memory with its
base and delta models and set_base_shapes.

On a GPU (``--device cuda``): ``--autocast bf16`` runs forward and loss under bfloat16 autocast
(params and AdamW state stay float32), ``--flash`` makes every attention call take the flash
kernel (torch raises where it cannot, e.g. in float32 or with a head dim over 256, instead of
falling back to a slower kernel unseen), ``--compile`` steps ``torch.compile`` d models (the
compile happens in the warm-up round, which is not timed). The table then adds the peak
device memory of each model's steps (params, optimizer state and activations) and tokens/s.

mup is not a dependency; its column is left out without it. Its package requires torchvision,
which pulls another torch build: install it without dependencies, with the two it imports:
``pip install --no-deps mup pyyaml tqdm``.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F  # noqa: N812

import tensorprog as tp
from tensorprog.emit.load import load_module
from tensorprog.emit.module import emit
from tensorprog.engine.optimizers import OPTIMIZERS
from tensorprog.engine.parametrization import choose

ROOT = Path(__file__).resolve().parent.parent


def emitted_module(tokens: int, vocab: int):
    text = (ROOT / "examples" / "gpt.tp").read_text()
    text = text.replace("dim V = 64 ", f"dim V = {vocab} ").replace("dim T = 4 ",
                                                                     f"dim T = {tokens} ")
    program = tp.parse(text, "gpt.tp")
    abc, _, label, _ = choose(program, OPTIMIZERS["adam"], "mup")
    return load_module(emit(program, abc, optimizer=OPTIMIZERS["adam"], label=label,
                            command="bench"), "gpt_bench")


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


def mup_models(d: int, blocks: int, tokens: int, vocab: int, base_width: int):
    """The hand-written GPT made µP with the mup package, as its README does it: the tied
    readout a MuSharedReadout, attention 1/d_head, shapes from a base and a delta model. None
    without mup."""
    try:
        import mup
    except ImportError:
        return None

    class MuGPT(HandGPT):
        def __init__(self, d: int):
            super().__init__(d, blocks, tokens, vocab)
            self.scale = 1 / (d // 4)  # mup: 1/d, not 1/sqrt(d)
            self.readout = mup.MuSharedReadout(self.wte.weight, bias=False)

        def forward(self, tok):
            x = self.wte(tok) + self.wpe(torch.arange(tok.shape[-1], device=tok.device))
            for block in self.blocks:
                x = block(x, self.scale)
            return self.readout(self.ln(x))

    def build(width: int):
        model = MuGPT(width)
        mup.set_base_shapes(model, MuGPT(base_width), delta=MuGPT(2 * base_width))
        return model

    return build, mup.MuAdamW


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return math.nan


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


def context(args):
    """What every forward runs under: autocast and the attention kernel the options ask for."""
    stack = contextlib.ExitStack()
    if args.autocast == "bf16":
        stack.enter_context(torch.autocast(torch.device(args.device).type, torch.bfloat16))
    if args.flash:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        stack.enter_context(sdpa_kernel(SDPBackend.FLASH_ATTENTION))
    return stack


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--blocks", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    ap.add_argument("--autocast", choices=["none", "bf16"], default="none",
                    help="run forward and loss under bfloat16 autocast (default: none)")
    ap.add_argument("--flash", action="store_true",
                    help="require the flash attention kernel (CUDA, with --autocast bf16)")
    ap.add_argument("--compile", action="store_true", help="time torch.compile'd models")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    gpt = emitted_module(args.tokens, args.vocab)
    models = {"emitted": gpt.Model(args.width, args.blocks),
              "hand-written": HandGPT(args.width, args.blocks, args.tokens, args.vocab)}
    mup = mup_models(args.width, args.blocks, args.tokens, args.vocab, gpt.BASE_WIDTH)
    if mup is None:
        print("mup is not installed (pip install --no-deps mup pyyaml tqdm): no mup column")
    else:
        models["mup"] = mup[0](args.width)
    for model in models.values():
        model.to(args.device)
    opts = {"emitted": torch.optim.AdamW(gpt.param_groups(models["emitted"], 1e-4), lr=1e-4),
            "hand-written": torch.optim.AdamW(models["hand-written"].parameters(), lr=1e-4)}
    if mup is not None:
        opts["mup"] = mup[1](models["mup"].parameters(), lr=1e-4)
    # compiled callables share the eager modules' params; saved_bytes hooks the eager ones
    run = {k: torch.compile(m) if args.compile else m for k, m in models.items()}
    tok = torch.randint(0, args.vocab, (args.batch, args.tokens)).to(args.device)
    cuda = args.device.startswith("cuda")
    times: dict[str, list[float]] = {k: [] for k in models}
    peak: dict[str, float] = {}
    for _ in range(args.rounds + 1):  # the first round warms up (and compiles)
        for name in models:
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            sync(args.device)
            start = time.perf_counter()
            for _ in range(args.steps):
                with context(args):
                    loss = F.cross_entropy(run[name](tok).flatten(0, 1).float(), tok.flatten())
                opts[name].zero_grad()
                loss.backward()
                opts[name].step()
            sync(args.device)
            times[name].append((time.perf_counter() - start) / args.steps)
            if cuda:
                peak[name] = max(peak.get(name, 0), torch.cuda.max_memory_allocated())
    where = torch.cuda.get_device_name() if cuda else platform.processor() or platform.machine()
    print(f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads; width "
          f"{args.width}, {args.blocks} blocks, {args.tokens} tokens, batch {args.batch}, vocab "
          f"{args.vocab}; autocast {args.autocast}, flash {'required' if args.flash else 'no'}, "
          f"compile {'yes' if args.compile else 'no'}")
    hand_t = statistics.median(times["hand-written"][1:])
    with context(args):
        hand_m = saved_bytes(models["hand-written"], tok)
    print("| model | step (ms) | × hand | saved for backward (MiB) | × hand | groups "
          "| peak (MiB) | tokens/s |")
    print("|---|---|---|---|---|---|---|---|")
    for name, model in models.items():
        t = statistics.median(times[name][1:])
        with context(args):
            m = saved_bytes(model, tok)
        mem = f"{peak[name] / 2**20:.0f}" if cuda else "-"
        print(f"| {name} | {1e3 * t:.0f} | {t / hand_t:.2f} | {m / 2**20:.0f} | "
              f"{m / hand_m:.2f} | {len(opts[name].param_groups)} | {mem} | "
              f"{args.batch * args.tokens / t:,.0f} |")
    if args.build:
        build(mup_models(2048, 24, 1024, 50304, gpt.BASE_WIDTH))


def build(mup) -> None:
    """Build the 24-block, width-2048 GPT one way at a time: time and resident memory added."""
    big = emitted_module(1024, 50304)
    ways = [(f"emitted, {device}", lambda device=device: big.Model(2048, 24, device=device))
            for device in ("meta", "cpu")]
    if mup is not None:
        ways.append(("mup: model, base, delta, set_base_shapes", lambda: mup[0](2048)))
    for name, make in ways:
        gc.collect()
        before = rss_mib()
        start = time.perf_counter()
        model = make()
        took = time.perf_counter() - start
        count = sum(p.numel() for p in model.parameters())
        print(f"build {count / 1e9:.2f}B params, {name}: {took:.2f} s, "
              f"+{rss_mib() - before:.0f} MiB resident")
        del model


if __name__ == "__main__":
    main()
