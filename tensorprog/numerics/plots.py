"""Figures: the coordinate check as log-log panels, and µTransfer sweeps (matplotlib, drawn
off-screen)."""

from __future__ import annotations

import math
from pathlib import Path

from ..errors import UsageError
from .judge import CheckResult

# the Creator every figure is saved with, in the formats whose metadata matplotlib writes: what
# tells a figure this package drew (and may replace) from any other image
CREATOR = "tensorprog.numerics.plots"
MARKED_FORMATS = ("eps", "pdf", "png", "ps", "svg")
_MAX_FIGURE_BYTES = 64 * 2**20


def drawn_here(path: Path) -> bool:
    """Whether ``path`` is a figure saved here (its format carries the Creator mark)."""
    if path.suffix.lstrip(".").lower() not in MARKED_FORMATS:
        return False
    try:
        with open(path, "rb") as f:
            return CREATOR.encode() in f.read(_MAX_FIGURE_BYTES)
    except OSError:
        return False


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

    Each row has its legend in a column of its own, right of the panels, with each vector's
    slope at init and after the last step; the panels grow with the number of vectors so that
    the legend fits. Vectors are told apart by colour, marker and line style together (20
    colours, 6 markers and 2 line styles: 240 distinct styles). A failing vector is drawn thick
    and opaque, its name in red in the legend, and dashed in the panels where it fails; passing
    ones are thin and faded. A key under the legend says so.
    """
    import matplotlib

    matplotlib.use("Agg")  # no screen needed; the figure only goes to a file
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    results = results if isinstance(results, list) else [results]
    steps = list(range(max(r.steps for r in results) + 1))
    count = max(len(_names(r)) for r in results)
    columns = 1 if count <= _PER_COLUMN else 2
    # a legend line is about 0.16 in at 7 pt, plus its title; a label about 0.06 in a character
    height = max(3.4, 0.16 * (math.ceil(count / columns) + 2) + 0.9)
    chars = max(len(_label(r, n)) for r in results for n in _names(r))
    legend_width = columns * (0.45 + 0.058 * chars) + 0.1
    fig, axes = plt.subplots(
        len(results), len(steps) + 1, squeeze=False,
        figsize=(3.2 * len(steps) + legend_width, height * len(results)),
        gridspec_kw={"width_ratios": [3.2] * len(steps) + [legend_width]})
    for row, result in zip(axes, results, strict=True):
        _row(row[:-1], row[-1], result, steps, columns)
    key = [(Line2D([], [], color="0.3", linewidth=0.8, alpha=0.55), "passes (thin, faded)"),
           (Line2D([], [], color="0.3", linewidth=2.0),
            "a failing vector (thick; its name in red)"),
           (Line2D([], [], color="0.3", linewidth=2.0, linestyle=(0, (4, 2))),
            "dashed: fails in that panel")]
    fig.tight_layout()
    fig.legend(*zip(*key, strict=True), loc="upper center", bbox_to_anchor=(0.5, 0.0),
               ncol=3, fontsize=8, frameon=False, handlelength=3)
    return _save(fig, path, tight=True)


def _save(fig, path: str | Path, tight: bool = False) -> Path:
    """Write the figure; ``tight``: the layout is done and the page grows to artists outside
    the panels (a key under them)."""
    import matplotlib.pyplot as plt

    if not tight:
        fig.tight_layout()
    out = Path(path)
    try:
        marked = out.suffix.lstrip(".").lower() in MARKED_FORMATS  # the others refuse metadata
        fig.savefig(out, dpi=110, bbox_inches="tight" if tight else None,
                    metadata={"Creator": CREATOR} if marked else None)
    except (OSError, ValueError) as err:
        raise UsageError(f"cannot write {out}: {getattr(err, 'strerror', None) or err}") from None
    finally:
        plt.close(fig)
    return out


_PER_COLUMN = 30  # legend entries per column before a second one
_MARKERS = "osD^vX"


def _names(result: CheckResult) -> list[str]:
    return list(dict.fromkeys(r.name for r in result.results))


def vector_style(k: int) -> dict:
    """The k-th vector's colour, marker and line style: tab20's 20 colours, cycled against 6
    markers (20 and 6 share the factor 2, hence the shift every 60 and the line style that
    flips every 120) so that no two of the first 240 vectors look the same. The 10 strong
    colours come first and then their light pairs, so that neighbours in program order differ
    in hue."""
    import matplotlib.pyplot as plt

    c = k % 20
    return {"color": plt.get_cmap("tab20")(2 * c if c < 10 else 2 * (c - 10) + 1),
            "marker": _MARKERS[(k + k // 60) % 6],
            "dashes": (None if (k // 120) % 2 == 0 else (1, 1))}


def _row(axes, key_ax, result: CheckResult, steps: list[int], columns: int) -> None:
    from matplotlib.lines import Line2D

    failing = set(result.failures)
    names = _names(result)
    by = {(r.name, r.step): r for r in result.results}
    for ax, t in zip(axes, steps, strict=True):
        drawn: list[float] = []
        for k, name in enumerate(names):
            r = by.get((name, t))
            if r is None:
                continue
            ws = [w for w, v in r.rms.items() if v > 0 and math.isfinite(v)]
            if not ws:
                continue
            drawn += [r.rms[w] for w in ws]
            style = vector_style(k)
            bad = name in failing
            ax.loglog(ws, [r.rms[w] for w in ws], marker=style["marker"],
                      markersize=3.5 if bad else 2.5, color=style["color"],
                      linewidth=2.0 if bad else 0.8, alpha=1.0 if bad else 0.55,
                      linestyle=(0, (4, 2)) if not r.ok else
                      ("-" if style["dashes"] is None else (0, style["dashes"])),
                      zorder=3 if bad else 2)
        if drawn:  # at least two decades, so that a flat line looks flat
            lo, hi = min(drawn), max(drawn)
            pad = max(1.0, math.sqrt(100 * lo / hi))
            ax.set_ylim(lo / pad, hi * pad)
        ax.set_xscale("log", base=2)
        ax.set_xticks(result.widths, [str(w) for w in result.widths], fontsize=7)
        ax.minorticks_off()
        ax.set_title("init" if t == 0 else f"change after step {t}", fontsize=10)
        ax.set_xlabel(result.settings.get("axis", "width"))
        ax.grid(True, which="major", alpha=0.3)
    axes[0].set_ylabel("RMS of coordinates")
    s = result.settings
    named = list(result.failures)
    verdict = ("DIVERGED" if result.diverged else "PASS" if result.passed
               else f"FAIL ({', '.join(named)})" if len(named) <= 4
               else f"FAIL: {len(named)} vectors")
    axes[0].set_title("")
    axes[0].set_title(f"{s.get('label', s.get('program', ''))}: {verdict}\ninit", fontsize=9,
                      loc="left")

    handles = []
    for k, name in enumerate(names):
        style = vector_style(k)
        bad = name in failing
        handles.append(Line2D([], [], color=style["color"], marker=style["marker"],
                              markersize=3.5, linewidth=2.0 if bad else 0.8,
                              alpha=1.0 if bad else 0.7))
    key_ax.axis("off")
    legend = key_ax.legend(handles, [_label(result, n) for n in names], loc="upper left",
                           fontsize=7, ncol=columns, frameon=False, borderaxespad=0.0,
                           handlelength=2.2, columnspacing=0.8,
                           title=f"vector, slope at init / after step {result.steps}",
                           title_fontsize=7, alignment="left")
    for text, name in zip(legend.get_texts(), names, strict=True):
        if name in failing:
            text.set_color("tab:red")
            text.set_fontweight("bold")


def _label(result: CheckResult, name: str) -> str:
    by = {(r.name, r.step): r for r in result.results if r.name == name}
    return f"{name}  {_slope(by.get((name, 0)))} / {_slope(by.get((name, result.steps)))}"


def _slope(r) -> str:
    if r is None or math.isnan(r.slope):
        return "n/a"
    return "zero" if r.slope == -math.inf else f"{r.slope:+.2f}"


def transfer_plot(sweep, path: str | Path) -> Path:
    """Loss against log2(HP), one curve per width or depth (darker = larger), a panel per
    parametrization, with each width's fitted optimum marked: the µP paper's figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    params = list(sweep.losses)
    fig, axes = plt.subplots(1, len(params), figsize=(4.6 * len(params), 3.8), sharey=True,
                             squeeze=False)
    cmap = plt.get_cmap("viridis")
    xs = [math.log2(v) for v in sweep.values]
    axis = sweep.settings.get("axis", "width")  # a depth sweep keeps its depths in .widths
    for ax, param in zip(axes[0], params, strict=True):
        for k, w in enumerate(sweep.widths):
            color = cmap(0.9 - 0.8 * k / max(1, len(sweep.widths) - 1))
            ys = [sweep.losses[param][w][v] for v in sweep.values]
            ax.plot(xs, [y if math.isfinite(y) else float("nan") for y in ys], marker="o",
                    markersize=3, color=color, label=f"{axis} {w}")
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
