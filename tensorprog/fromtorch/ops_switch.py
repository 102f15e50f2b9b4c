"""A traced value compared with a number: the switch of a piecewise function, refused.

``torch.where(x > 0, a, b)`` with a and b computed from x (xIELU's, Apertus' activation) is a
coordinatewise function chosen by x's sign. The language has no such function, and the engine's
rules for one would need more than a bounded slope on each piece: where the pieces do not meet
at the switch, a coordinate whose sign a change flips jumps by the whole gap however small the
change, so a change of size n^e < 1 moves the output by about n^{e/2} (the gap times the root of
the fraction of coordinates flipped, which is of the change's size for a value of bounded
density at the switch), and no exponent rule of the engine (sums of slots, linear in a, b, c)
states that: Θ(1) would bound it loosely, claiming a vanishing change is not, and the slope's
n^e would miss it. xIELU's pieces do not meet: its negative piece ``alpha_n * (expm1(min(x, eps)) -
x) + beta * x`` is ``alpha_n * expm1(eps)`` at 0 (eps = -1e-6), where its positive piece
``alpha_p * x * x + beta * x`` is 0.

So the comparison is refused where it is written, and where a ``where`` reads it, the message
says what its two pieces are at the switch, computed from the graph with x set to the
compared number: a gap (no rule can be sound) or pieces that meet (a form the language lacks).
"""

from __future__ import annotations

import math

from .values import Conc, PRef
from .where import op_name, refuse

_SYMBOLS = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}

#: a param's entries where the graph holds none (a model built on the meta device): the gap
#: is measured there, which is enough to tell a gap from pieces that meet at every value
_FILL = 0.5


class _Unknown(Exception):
    """A value the pieces read that is neither the compared one, a param nor a constant."""


class SwitchOps:
    """x > c, x >= c, x < c, x <= c of a traced value: refused, with what the pieces do."""

    def op_gt(self, node, x, other):
        raise self.refuse_switch(node, other)

    def op_ge(self, node, x, other):
        raise self.refuse_switch(node, other)

    def op_lt(self, node, x, other):
        raise self.refuse_switch(node, other)

    def op_le(self, node, x, other):
        raise self.refuse_switch(node, other)

    def refuse_switch(self, node, other):
        rhs = _number(other)
        sym = _SYMBOLS[op_name(node)]
        what = f"x {sym} {rhs!r}" if rhs is not None else f"x {sym} y"
        self._filled = False
        gap = self._gap(node, rhs) if rhs is not None else None
        filled = f", its params set to {_FILL} (the trace holds no values)" if self._filled else ""
        if gap is None:
            told = ""
        elif gap > 0:
            told = (f"; here the pieces differ by {gap:.3g} at x = {rhs!r}{filled}, a jump "
                    "(xIELU's eps = -1e-6 leaves alpha_n * expm1(eps) there)")
        else:
            told = f"; here the pieces meet at x = {rhs!r}, but the language has no such form"
        return refuse(node, f"a comparison of a traced value ({what}), the switch of a "
                      "piecewise function (torch.where(x > 0, a, b)): the language has no "
                      "function chosen by a vector's sign, and pieces that do not meet at the "
                      "switch jump there by the whole gap under a change however small (about "
                      "n^(e/2) of a change n^e < 1), which no exponent rule of the engine "
                      f"states{told}",
                      help="use one of the language's functions (relu, gelu, silu, softplus, "
                      "...; docs/language.md) for the activation, or trace the model without "
                      "this part")

    def _gap(self, node, at: float) -> float | None:
        """The largest |a - b| at x = ``at`` over the ``where(node, a, b)`` that read the
        comparison, the params at their values (``_FILL`` where the graph holds none); None if
        no where reads it or a piece reads anything but x, params and constants."""
        import torch

        src = node.args[0]
        gaps = []
        for user in node.users:
            if op_name(user) != "where" or user.args[0] is not node:
                continue
            x = torch.tensor([at], dtype=torch.float64)
            try:
                a, b = (self._piece(p, src, x, {}) for p in user.args[1:3])
                gaps.append(float((torch.as_tensor(a) - torch.as_tensor(b)).abs().max()))
            except (_Unknown, RuntimeError, TypeError, ValueError, IndexError):
                return None
        finite = [g for g in gaps if math.isfinite(g)]
        return max(finite) if finite and len(finite) == len(gaps) else None

    def _piece(self, n, src, x, memo: dict):
        """n's value with ``src`` set to x (float64), by running its ops on it."""
        import torch

        if isinstance(n, (list, tuple)):
            return type(n)(self._piece(a, src, x, memo) for a in n)
        if not hasattr(n, "op"):
            return n  # a number, a dtype, None
        if n is src:
            return x
        if n.name in memo:
            return memo[n.name]
        if n.op == "placeholder":
            value = self.env.get(n.name)
            if isinstance(value, PRef):
                held = self.ep.state_dict.get(value.target)
                self._filled |= held is None or held.device.type == "meta"
                out = (held.detach().double() if held is not None and held.device.type != "meta"
                       else torch.full(value.shape, _FILL, dtype=torch.float64))
            elif isinstance(value, Conc):
                out = value.value
                out = out.detach().double() if isinstance(out, torch.Tensor) else out
            else:
                raise _Unknown(n.name)
        elif n.op == "call_function":
            args = [self._piece(a, src, x, memo) for a in n.args]
            kwargs = {k: self._piece(v, src, x, memo) for k, v in n.kwargs.items()
                      if k not in ("device", "dtype")}
            out = n.target(*args, **kwargs)
        else:
            raise _Unknown(n.name)
        memo[n.name] = out
        return out


def _number(c) -> float | None:
    """A comparison's right side as a number (a Python number, or a one-entry constant)."""
    value = getattr(c, "value", c)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    numel = getattr(value, "numel", None)
    return float(value) if numel is not None and numel() == 1 else None
