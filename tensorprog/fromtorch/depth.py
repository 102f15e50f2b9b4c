"""``MuP``'s depth (apply.py's class takes it as a base): for a model whose stack of layers was
traced as a block repeated over the depth L, the model's depth is its stack's length, and every
factor is (width/base)^-e times (depth/base_depth)^-e_L, the depth exponents folded as the
width's are."""

from __future__ import annotations

from fractions import Fraction

from ..errors import UsageError


class DepthScaling:
    """The depth side of a ``MuP`` (its ``stack``, ``derivation``, ``traced`` and
    ``base_depth``)."""

    def _check_base_depth(self, base_depth) -> int | None:
        if base_depth is None:
            return self.stack.depth if self.stack else None
        if self.stack is None:
            raise UsageError(
                "base_depth is given, but the traced program has no depth (no stack of "
                "identical layers was rolled into a block: see the notes in its source)",
                help="leave base_depth out",
            )
        if isinstance(base_depth, bool) or not isinstance(base_depth, int) or base_depth < 1:
            raise UsageError(
                f"base_depth must be a whole number of layers >= 1, not {base_depth!r}",
                help=f"e.g. base_depth={self.stack.depth} (the traced depth), the depth the "
                "hyperparameters were tuned at",
            )
        return base_depth

    def _depth_exponents(self, k: int) -> None:
        """Each param's exponents in the depth L, folded as in the width: init std
        ∝ L^-(aL+bL), LR ∝ L^-(cL+k·aL), Adam's ε ∝ L^-(epsL-aL); none without a stack, or
        where derive has no depth exponents (under SGD: it says why)."""
        d = self.derivation.depth
        self.depth_exp: dict[str, Fraction] = {}  # a scale's aL
        self.init_exp_L: dict[str, Fraction] = {}
        self.lr_exp_L: dict[str, Fraction] = {}
        self.eps_exp_L: dict[str, Fraction] = {}
        if self.stack is None or d is None:
            return
        for p, x in d.abc.items():
            a = Fraction(str(x.a))
            if p in self.traced.scales:
                self.depth_exp[p] = a
            elif p in self.traced.params:
                self.init_exp_L[p] = a + Fraction(str(x.b))
                self.lr_exp_L[p] = Fraction(str(x.c)) + k * a
        for p, e in self.derivation.eps_depth.items():
            if p in self.traced.params:
                self.eps_exp_L[p] = Fraction(str(e)) - Fraction(str(d.abc[p].a))

    def depth_of(self, model) -> int | None:
        """The model's depth: the length of its traced stack (None: the program has none)."""
        if self.stack is None:
            return None
        try:
            layers = model.get_submodule(self.stack.prefix) if self.stack.prefix else model
            depth = len(layers) - self.stack.first  # the first ones stay unrolled
        except (AttributeError, TypeError):
            raise UsageError(
                f"this model has no stack {self.stack.prefix!r} of layers, as the traced one",
                help="pass a model built by the traced build(width)",
            ) from None
        if depth < 1:
            raise UsageError(
                f"this model's {self.stack.prefix} has {depth + self.stack.first} layers: the "
                f"traced block's repetitions start at layer {self.stack.first}",
                help="pass a model built by the traced build(width), with its stack",
            )
        return depth

    def _depth_ratio(self, model, base_depth: int | None) -> float:
        """depth / base depth (1 without a stack)."""
        depth = self.depth_of(model)
        if depth is None:
            self._check_base_depth(base_depth)  # refuses a base depth for no depth
            return 1.0
        base = self._check_base_depth(base_depth) if base_depth is not None else self.base_depth
        return depth / base

    def _depth_lines(self) -> list[str]:
        if self.derivation.depth is None:
            return [f"no exponents in the depth: {self.derivation.depth_refused}; the width's "
                    "µP only, the same at every depth"]
        scaled = [
            f"depth: {p} init std x (L/base)^-{self.init_exp_L[p]}, LR x (L/base)^-"
            f"{self.lr_exp_L.get(p, 0)}"
            for p in self.traced.params
            if self.init_exp_L.get(p) or self.lr_exp_L.get(p)
        ]
        return scaled or ["depth: no param scales with the depth"]

