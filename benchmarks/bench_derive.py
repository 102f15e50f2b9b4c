"""Derive speed on generated deep programs, and CLI start-up to answer on examples/mlp.tp.

    python benchmarks/bench_derive.py            # prints a markdown table

Targets: 1,000 instructions derive in under 1 s; growth no faster than linear; a 48-block
transformer derives in under 2 s; examples/gpt.tp derives as fast at depth 48 as at 2; the CLI
answers for examples/mlp.tp in under 1 s. Times are the best of a few runs (this machine is
shared and noisy).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import tensorprog as tp

ROOT = Path(__file__).resolve().parent.parent


def mlp_chain(layers: int) -> str:
    """An MLP with biases: 3 instructions a layer (matmul, bias add, relu)."""
    lines = ["width n = 256", "dim d_in = 32", "dim d_out = 10", "input x : [d_in]",
             "param W0 : [n, d_in]", "param Wo : [d_out, n]"]
    lines += [f"param W{k} : [n, n]\nparam b{k} : [n]" for k in range(1, layers + 1)]
    lines.append("x0 = relu(W0 @ x)")
    lines += [f"x{k} = relu(W{k} @ x{k - 1} + b{k})" for k in range(1, layers + 1)]
    lines.append(f"output y = Wo @ x{layers}")
    return "\n".join(lines) + "\n"


def transformer(blocks: int) -> str:
    """A pre-LN decoder like examples/transformer.tp (tied, 4 heads) with ``blocks`` blocks."""
    lines = ["width n = 128", "dim V = 64", "dim T = 4", "dim dh = n / 4", "dim ff = 4 * n",
             "input tok : tokens[T, V]", "input pos : positions[T]", "param E : [n, V]",
             "param P : [n, T]", "scale attn = 0.1767766952966369", "scale tie",
             "param gf : [n] = 1", "param bf : [n] = 0", "r0 = E @ tok + P @ pos"]
    for b in range(1, blocks + 1):
        lines += [f"param ga{b} : [n] = 1", f"param ba{b} : [n] = 0", f"param gm{b} : [n] = 1",
                  f"param bm{b} : [n] = 0"]
        lines += [f"param W{w}{b} : [n, n]" for w in "qkvo"]
        lines += [f"param Wi{b} : [ff, n]", f"param Wp{b} : [n, ff]"]
        lines += [f"a{b} = ga{b} * layernorm(r{b - 1}) + ba{b}",
                  f"s{b} = attn * dot(Wq{b} @ a{b}, Wk{b} @ a{b}, dh)",
                  f"h{b} = r{b - 1} + Wo{b} @ mix(causal_softmax(s{b}), Wv{b} @ a{b})",
                  f"m{b} = gm{b} * layernorm(h{b}) + bm{b}",
                  f"r{b} = h{b} + Wp{b} @ gelu(Wi{b} @ m{b})"]
    lines.append(f"output logits = tie * (E.T @ (gf * layernorm(r{blocks}) + bf))")
    return "\n".join(lines) + "\n"


def best(fn, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return min(times), result


def main() -> None:
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python "
          f"{platform.python_version()}\n")
    print("| instructions | parse (s) | derive (s) | derive µs/instruction |")
    print("|---:|---:|---:|---:|")
    previous = None
    for layers, repeats in ((33, 5), (333, 3), (3333, 2)):
        src = mlp_chain(layers)
        t_parse, program = best(lambda s=src: tp.parse(s), repeats)
        t_derive, _ = best(lambda p=program: tp.derive(p, "adam"), repeats)
        size = len(program.body)
        print(f"| {size:,} | {t_parse:.3f} | {t_derive:.3f} | {1e6 * t_derive / size:.0f} |")
        if previous:
            growth = (t_derive / previous[1]) / (size / previous[0])
            print(f"|  (×{size / previous[0]:.0f} size: derive time ×{t_derive / previous[1]:.1f}, "
                  f"{growth:.2f}× linear) | | | |")
        previous = (size, t_derive)
    src = transformer(48)
    t_parse, program = best(lambda: tp.parse(src), 3)
    t_derive, d = best(lambda: tp.derive(program, "adam"), 3)
    assert d.abc["attn"].a == 1
    print(f"\n48-block transformer ({len(program.body):,} instructions, {len(program.params)} "
          f"params): parse {t_parse:.2f} s, derive {t_derive:.2f} s (Adam), together "
          f"{t_parse + t_derive:.2f} s")
    gpt = (ROOT / "examples" / "gpt.tp").read_text()
    times = {}
    for depth in (2, 48):
        program = tp.parse(gpt.replace("depth L = 24", f"depth L = {depth}"))
        times[depth], d = best(lambda p=program: tp.derive(p, "adam"), 5)
        assert d.abc["layer.Wq"].c == 1
    print(f"\nexamples/gpt.tp (one block, `repeat L`, {len(program.body)} instructions): derive "
          f"{times[2]:.3f} s at L = 2, {times[48]:.3f} s at L = 48 (Adam; the engine never "
          "unrolls)")
    cmd = [sys.executable, "-m", "tensorprog.cli", "derive", str(ROOT / "examples" / "mlp.tp")]
    t_cli, _ = best(lambda: subprocess.run(cmd, check=True, capture_output=True), 5)
    print(f"\nCLI start-up to answer, `tensorprog derive examples/mlp.tp`: {t_cli:.2f} s")


if __name__ == "__main__":
    main()
