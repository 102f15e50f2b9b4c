"""Figures: the coordinate check as log-log panels, and µTransfer sweeps (matplotlib, drawn
off-screen)."""

from __future__ import annotations

import math
from pathlib import Path

from .coordcheck import CheckResult
from .errors import UsageError


def check_plot_path(path: str | Path) -> Path:
    """Refuse, before any training, a figure path matplotlib cannot write."""
    from matplotlib.backend_bases import FigureCanvasBase

    out = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    if out.suffix.lstrip(".").lower() not in formats:
        raise UsageError(f"cannot draw {out}: unknown figure format {out.suffix or '(none)'!r}",
                         help=f"use one of {', '.join('.' + f for f in sorted(formats))}")
    if not out.parent.is_dir():
        raise UsageError(f"cannot write {out}: no directory {out.parent}")
    return out


def coord_plot(results: CheckResult | list[CheckResult], path: str | Path) -> Path:
    """One panel for init and one per step: mean RMS over seeds against width, a line per vector.

    Several results (e.g. µP, SP, NTP of one program) are drawn as rows of one figure.

    Each legend entry gives the fitted slope. Failing vectors are drawn thick, and dashed in
    the panels where they fail.
    """
    import matplotlib

    matplotlib.use("Agg")  # no screen needed; the figure only goes to a file
    import matplotlib.pyplot as plt

    results = results if isinstance(results, list) else [results]
    steps = list(range(max(r.steps for r in results) + 1))
    fig, axes = plt.subplots(len(results), len(steps), sharex=True, squeeze=False,
                             figsize=(3.2 * len(steps), 3.4 * len(results)))
    for row, result in zip(axes, results, strict=True):
        _row(row, result, steps)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    out = Path(path)
    try:
        fig.savefig(out, dpi=110)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot write {out}: {getattr(err, 'strerror', None) or err}") from None
    finally:
        plt.close(fig)
    return out


def _row(axes, result: CheckResult, steps: list[int]) -> None:
    import matplotlib.pyplot as plt

    failing = set(result.failures)
    names = list(dict.fromkeys(r.name for r in result.results))
    colors = plt.get_cmap("tab10")
    for ax, t in zip(axes, steps, strict=True):
        drawn: list[float] = []
        for k, name in enumerate(names):
            r = next((x for x in result.results if x.name == name and x.step == t), None)
            if r is None:
                continue
            ws = [w for w, v in r.rms.items() if v > 0 and math.isfinite(v)]
            if not ws:
                continue
            drawn += [r.rms[w] for w in ws]
            label = f"{name} ({r.slope:+.2f})" if math.isfinite(r.slope) else name
            ax.loglog(ws, [r.rms[w] for w in ws], marker="o", markersize=3,
                      linewidth=2.0 if name in failing else 0.9,
                      linestyle="-" if r.ok else "--", color=colors(k % 10), label=label)
        if drawn:  # at least two decades, so that a flat line looks flat
            lo, hi = min(drawn), max(drawn)
            pad = max(1.0, math.sqrt(100 * lo / hi))
            ax.set_ylim(lo / pad, hi * pad)
        ax.set_xscale("log", base=2)
        ax.set_title("init" if t == 0 else f"change after step {t}", fontsize=10)
        ax.set_xlabel("width")
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=6, loc="best")
    axes[0].set_ylabel("RMS of coordinates")
    s = result.settings
    verdict = "PASS" if result.passed else f"FAIL ({', '.join(sorted(failing))})"
    axes[0].set_title("")
    axes[0].set_title(f"{s.get('label', '')}: {verdict}\ninit", fontsize=9, loc="left")


def transfer_plot(sweep, path: str | Path) -> Path:
    """Loss against log2(HP), one curve per width (darker = wider), a panel per
    parametrization, with each width's fitted optimum marked: the µP paper's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(sweep.losses)
    fig, axes = plt.subplots(1, len(params), figsize=(4.6 * len(params), 3.8), sharey=True,
                             squeeze=False)
    cmap = plt.get_cmap("viridis")
    xs = [math.log2(v) for v in sweep.values]
    for ax, param in zip(axes[0], params, strict=True):
        for k, w in enumerate(sweep.widths):
            color = cmap(0.9 - 0.8 * k / max(1, len(sweep.widths) - 1))
            ys = [sweep.losses[param][w][v] for v in sweep.values]
            ax.plot(xs, [y if math.isfinite(y) else float("nan") for y in ys], marker="o",
                    markersize=3, color=color, label=f"width {w}")
            best, _ = sweep.optimum(param, w)
            if best is not None:
                ax.axvline(best, color=color, linewidth=0.6, linestyle=":")
        drift = sweep.drift(param)
        ax.set_title(f"{param}: optimum drift {'n/a' if drift is None else f'{drift:.2f}'} "
                     f"(log2)", fontsize=10)
        ax.set_xlabel(f"log2 {sweep.hp}")
        ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("training loss")
    st = sweep.settings
    fig.suptitle(f"{st.get('program', '')} on {st.get('data', '')}, {st.get('optimizer', '')}",
                 fontsize=10)
    return _save(fig, path)
