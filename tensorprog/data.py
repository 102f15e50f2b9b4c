"""Real data for µTransfer sweeps, with nothing to download.

* ``digits``: the 1,797 8×8 handwritten digits that ship inside scikit-learn (64 features, 10
  classes), standardised per feature; for MLPs.
* ``text``: a character-level language-modelling set built from the Python documentation's topic
  pages that ship with CPython itself (``pydoc_data.topics``, about 465,000 characters of English
  and code), printable ASCII plus one token for anything else; for decoders with token inputs.
* any ``FILE.pt`` holding ``{"x": float tensor (N, d_in), "y": long tensor (N,)}`` (a
  classification set) or ``{"tokens": long tensor (N,)}`` (a token stream).

A :class:`Dataset` hands out batches from a seeded generator, so a trial is reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .errors import UsageError

DATASETS = ("digits", "text")
_PRINTABLE = [chr(c) for c in range(32, 127)] + ["\n"]


@dataclass
class Dataset:
    """Either a classification set (x, y) or a token stream (tokens)."""

    name: str
    x: object = None  # float (N, d_in)
    y: object = None  # long (N,)
    tokens: object = None  # long (N,)
    vocab: int = 0  # classes, or token ids
    about: str = ""

    @property
    def is_text(self) -> bool:
        return self.tokens is not None

    def batch(self, batch_size: int, generator, seq: int | None = None):
        """(inputs, targets): rows of x and their labels, or token windows and the next tokens."""
        import torch

        if not self.is_text:
            idx = torch.randint(0, len(self.y), (batch_size,), generator=generator)
            return self.x[idx], self.y[idx]
        starts = torch.randint(0, len(self.tokens) - seq, (batch_size,), generator=generator)
        window = starts[:, None] + torch.arange(seq + 1)
        chunk = self.tokens[window]
        return chunk[:, :-1], chunk[:, 1:]


def load(name: str) -> Dataset:
    import torch

    if name == "digits":
        try:
            from sklearn.datasets import load_digits
        except ImportError:  # pragma: no cover - scikit-learn is a dependency
            raise UsageError("the digits set needs scikit-learn",
                             help="pip install scikit-learn") from None
        d = load_digits()
        x = torch.tensor(d.data, dtype=torch.float32)
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
        return Dataset("digits", x=x, y=torch.tensor(d.target, dtype=torch.long), vocab=10,
                       about="scikit-learn's 1,797 handwritten digits, 8x8 = 64 features, "
                             "10 classes")
    if name == "text":
        from pydoc_data.topics import topics

        text = "".join(topics[k] for k in sorted(topics))
        index = {c: i for i, c in enumerate(_PRINTABLE)}
        other = len(_PRINTABLE)
        ids = torch.tensor([index.get(c, other) for c in text], dtype=torch.long)
        return Dataset("text", tokens=ids, vocab=other + 1,
                       about=f"{len(text):,} characters of CPython's pydoc_data topics, "
                             f"{other + 1} token ids")
    path = Path(name)
    if path.suffix == ".pt":
        if not path.is_file():
            raise UsageError(f"--data {name}: no such file")
        try:
            blob = torch.load(path, weights_only=True)
        except Exception as err:  # any unreadable file: say so instead of a traceback
            why = str(err).split("\n")[0]
            raise UsageError(f"--data {name}: cannot read it as a torch file ({why})",
                             help='save it with torch.save({"x": x, "y": y}, path)') from None
        return _from_tensors(path, blob)
    raise UsageError(f"unknown data set {name!r}",
                     help=f"choose {', '.join(DATASETS)}, or give a FILE.pt")


def _from_tensors(path: Path, blob) -> Dataset:
    import torch

    def bad(why: str) -> UsageError:
        return UsageError(f"--data {path}: {why}", help='expected {"x": float (N, d_in), "y": '
                          'integer labels (N,)} or {"tokens": integer ids (N,)}')

    if not isinstance(blob, dict):
        raise bad("not a dict of tensors")
    if {"x", "y"} <= set(blob):
        x, y = blob["x"], blob["y"]
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise bad("x and y must be tensors")
        if x.dim() != 2 or y.dim() != 1 or len(x) != len(y) or len(y) == 0:
            raise bad(f"x must be (N, d_in) and y (N,) with N > 0, got {tuple(x.shape)} and "
                      f"{tuple(y.shape)}")
        if y.is_floating_point() or int(y.min()) < 0:
            raise bad("y must hold non-negative integer labels")
        return Dataset(path.stem, x=x.float(), y=y.long(), vocab=int(y.max()) + 1,
                       about=f"{path.name}: {len(y):,} labelled rows")
    if "tokens" in blob:
        t = blob["tokens"]
        if not isinstance(t, torch.Tensor) or t.dim() != 1 or t.is_floating_point() or \
                len(t) < 2 or int(t.min()) < 0:
            raise bad("tokens must be a 1-d tensor of at least 2 non-negative integer ids")
        return Dataset(path.stem, tokens=t.long(), vocab=int(t.max()) + 1,
                       about=f"{path.name}: {len(t):,} tokens")
    raise bad("expected a dict with x and y, or with tokens")
