"""Real data for µTransfer sweeps, with nothing to download.

* ``digits``: the 1,797 8×8 handwritten digits that ship inside scikit-learn (64 features, 10
  classes), standardised per feature; for MLPs.
* ``text``: a character-level language-modelling set built from the Python documentation's topic
  pages that ship with CPython itself (``pydoc_data.topics``, about 465,000 characters of English
  and code), printable ASCII plus one token for anything else; for decoders with token inputs.
* any ``FILE.pt`` holding ``{"x": float tensor (N, d_in), "y": long tensor (N,)}`` (a
  classification set) or ``{"tokens": long tensor (N,)}`` (a token stream).

A :class:`Dataset` hands out batches from a seeded generator, so a trial is reproducible. torch,
scikit-learn and the pydoc topics load inside the functions that use them: importing the
package stays light.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UsageError

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
            raise UsageError(f"--data {name}: " + ("is a directory" if path.is_dir()
                                                    else "no such file"),
                             help='give a file saved with torch.save({"x": x, "y": y}, path)')
        blob = read_tensor_file(name, "--data", 'a dict {"x": float (N, d_in), "y": integer '
                                'labels (N,)} or {"tokens": integer ids (N,)}',
                                'torch.save({"x": x, "y": y}, path)')
        return _from_tensors(path, blob)
    raise UsageError(f"unknown data set {name!r}",
                     help=f"choose {', '.join(DATASETS)}, or give a FILE.pt")


def read_tensor_file(path: str, option: str, holds: str, how: str, npy: bool = False):
    """What a user's tensor file holds (a ``.npy`` file too, with ``npy``), or a UsageError
    naming ``option`` and the file that says it must hold ``holds``, saved with ``how``: the
    one reader of the data files transfer and limit take. A garbage, empty or truncated file
    fails in torch's unpickler with whatever it met (UnpicklingError, EOFError, ...), and its
    text advises weights_only=False, which lets a file run code: the message says what the
    file must be instead."""
    import torch

    try:
        if npy and path.endswith(".npy"):
            import numpy as np  # heavy: only for a .npy file

            return np.load(path, allow_pickle=False)
        # weights_only: a data file is never allowed to run code while it loads
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError as err:
        raise UsageError(f"{option} {path}: cannot read it: {err.strerror or err}",
                         help=f"it must hold {holds}") from None
    except Exception:  # noqa: BLE001 - any file torch (or numpy) cannot read: see above
        writers = "torch.save or numpy.save" if npy else "torch.save"
        raise UsageError(f"{option} {path}: not a tensor file that {writers} wrote (empty, "
                         "truncated or another format)",
                         help=f"it must hold {holds}: save it with {how}") from None


MAX_CLASSES = 1 << 20  # the output layer has a row per class (or token id)


def _from_tensors(path: Path, blob) -> Dataset:
    import torch

    def bad(why: str) -> UsageError:
        return UsageError(f"--data {path}: {why}", help='expected {"x": float (N, d_in), "y": '
                          'integer labels (N,)} or {"tokens": integer ids (N,)}')

    if not isinstance(blob, dict):
        raise bad(f"not a dict of tensors but a {type(blob).__name__}")
    if {"x", "y"} <= set(blob) and "tokens" in blob:
        raise bad("holds both x, y and tokens: which set is meant is unclear")
    if {"x", "y"} <= set(blob):
        x, y = dense_tensor(blob["x"], "x", bad), dense_tensor(blob["y"], "y", bad)
        if x.dim() != 2 or y.dim() != 1 or len(x) != len(y) or len(y) == 0 or x.shape[1] == 0:
            raise bad(f"x must be (N, d_in) and y (N,) with N > 0 and d_in > 0, got "
                      f"{tuple(x.shape)} and {tuple(y.shape)}")
        if x.is_complex():
            raise bad(f"x holds complex numbers ({x.dtype}): the features must be real")
        if x.is_floating_point():
            check_finite(x, "x", bad)
        x = x.float()
        check_finite(x, "x", bad, " once converted to float32")
        classes = _ids(y, "y", "labels", bad)
        if len(torch.unique(y)) < 2:
            raise bad(f"y holds one class only ({int(y[0])}): the loss is 0 at every setting, so "
                      "the sweep has nothing to compare")
        return Dataset(path.stem, x=x, y=y.long(), vocab=classes,
                       about=f"{path.name}: {len(y):,} labelled rows")
    if "tokens" in blob:
        t = dense_tensor(blob["tokens"], "tokens", bad)
        if t.dim() != 1 or len(t) < 2:
            raise bad(f"tokens must be a 1-d tensor of at least 2 ids, got shape {tuple(t.shape)}")
        vocab = _ids(t, "tokens", "ids", bad)
        if bool((t == t[0]).all()):
            raise bad(f"every token is {int(t[0])}: the next token is always known, so the loss "
                      "is 0 at every setting")
        return Dataset(path.stem, tokens=t.long(), vocab=vocab,
                       about=f"{path.name}: {len(t):,} tokens")
    raise bad(f"expected a dict with x and y, or with tokens; got the keys "
              f"{', '.join(map(repr, blob)) or '(none)'}")


def dense_tensor(value, name: str, bad):
    """A dense CPU tensor with data, or the reason it is not one."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise bad(f"{name} is a {type(value).__name__}, not a tensor")
    if value.is_meta:
        raise bad(f"{name} is a meta tensor: it has a shape but no data")
    if value.layout != torch.strided:
        raise bad(f"{name} is a {value.layout} tensor, not a dense one (save {name}.to_dense())")
    if value.is_quantized:
        raise bad(f"{name} is a quantized tensor (save {name}.dequantize())")
    return value.detach()


def check_finite(x, name: str, bad, note: str = "",
                 then: str = "every loss would be nan") -> None:
    """Refuse, with ``bad``, a tensor holding an inf or nan, naming its first such entry."""
    import torch

    finite = torch.isfinite(x)
    if not bool(finite.all()):
        where = tuple(int(i) for i in (~finite).nonzero()[0])
        raise bad(f"{name}[{', '.join(map(str, where))}] is {float(x[where])}{note}: the data "
                  f"must be finite ({then})")


def _ids(t, name: str, what: str, bad) -> int:
    """The number of classes (or token ids) of integer ``t``, which must be 0..K-1 for a
    sensible K."""
    import torch

    if t.dtype == torch.bool or t.is_floating_point() or t.is_complex():
        raise bad(f"{name} must hold non-negative integer {what}, not {t.dtype}")
    low, high = int(t.min()), int(t.max())
    if low < 0:
        first = int((t < 0).nonzero()[0, 0])
        raise bad(f"{name}[{first}] is {int(t[first])}: {what} must be non-negative integers")
    if high >= MAX_CLASSES:
        first = int((t == high).nonzero()[0, 0])
        raise bad(f"{name}[{first}] is {high}: the output layer would need {high + 1:,} rows, "
                  f"one per id (at most {MAX_CLASSES:,}); number the {what} from 0")
    return high + 1
