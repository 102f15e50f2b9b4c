"""apply for a standardised kernel: its multiplier on its layer's output, not in its init.

Elsewhere apply folds a multiplier n^-a into the param's init (b + a) and LR (c + k·a)
(apply.py). A standardised kernel (ops_standardise.py) has no such fold: the model divides
each of its rows by its own std, so an init scaled by n^-a reads as the same Ŵ, and the
multiplier would be lost while its LR moved. So its µP is applied as derived (engine/
standardised.py): the init std ∝ n^-b (b = 0: the model's own std at the base width), the LR
∝ n^-c, Adam's ε as its gradient's entries n^-eps, and the multiplier n^-a as a forward patch
on the module whose one call returns the convolution alone (calls.py), its bias kept out
(factor·(Ŵ * x) + bias), as the program computes ``a·(K @ x) + b``; in a rolled stack, on
every layer's, its depth multiplier L^-aL in the same patch (bL = 0, the LR ∝ L^-cL). The
model's own standardisation is left as it is.
"""

from __future__ import annotations

from fractions import Fraction

from ..errors import UsageError
from .patches import Patch


def standardised_params(mup) -> list[str]:
    return [p for p in mup.traced.params if p in mup.derivation.abc and
            mup.program.param_table[p].standardised is not None]


def fold_standardised(mup) -> None:
    """Sets each standardised param's init, LR and ε exponents to its derived (b, c, eps)
    (the multiplier kept out of them), in the width and in a stack's depth alike, and adds the
    patch that carries its multiplier n^-a·L^-aL."""
    depth = mup.derivation.depth
    for p in standardised_params(mup):
        x = mup.derivation.abc[p]
        a = Fraction(str(x.a))
        mup.init_exp[p] = Fraction(str(x.b))
        mup.lr_exp[p] = Fraction(str(x.c))
        if p in mup.eps_exp:
            mup.eps_exp[p] += a  # the program's gradient: its multiplier stays in the forward
        a_L = Fraction(0)
        if p in mup.init_exp_L and depth is not None:  # (depth.py folds aL as a does)
            xL = depth.abc[p]
            a_L = Fraction(str(xL.a))
            if xL.b:  # the convention's bL = 0; another would move its LR as b does
                raise UsageError(f"{mup.traced.params[p].target} is standardised and its "
                                 f"depth convention gives it an init exponent bL = {xL.b}, "
                                 "which its rows' standardisation divides out",
                                 mup.traced.params[p].span, help="trace the model with "
                                 "from_torch(..., blocks=False) for width-only µP")
            mup.init_exp_L[p] = Fraction(0)
            mup.lr_exp_L[p] = Fraction(str(xL.c))
            if p in mup.eps_exp_L:
                mup.eps_exp_L[p] += a_L
        if a or a_L:
            mup.patches.append(_patch(mup, p, a, a_L))


def _patch(mup, p: str, a: Fraction, a_L: Fraction) -> Patch:
    use = mup.traced.params[p]
    made = [(v, b) for v, (w, b) in mup.traced.producers.items() if w == p]
    module = use.module
    bias = made[0][1] if made else None
    own_bias = bias is None or mup.traced.params[bias].target == (
        f"{module}.bias" if module else "bias")
    layer = p if mup.stack is not None and p in mup.stack.layers else None
    # a rolled block's kernel (module a pattern, blocks.{i}.conv): each traced layer's call
    layers = mup.stack.layers[p] if layer else [use]
    if any(mup.traced.calls.get(u.node) != u.module for u in layers) \
            or len(mup.program.uses(p)) != 1 or len(made) != 1 or not own_bias:
        raise UsageError(
            f"{use.target} is standardised: µP needs its output times (n/base)^-{a}, which "
            "cannot fold into its init (the standardisation divides it out) and so goes on "
            "the output of its module as a forward patch; but no module's one call returns "
            "that convolution alone (with its own bias), or the kernel is applied twice",
            use.span,
            help="compute the standardised convolution in a module of its own that returns "
            "it (as BiT's WeightStandardizedConv2d), called once per forward",
        )
    depth = f"·(L/base)^-{a_L}" if a_L else ""
    return Patch(module, use.node, a, None,
                 f"{use.target} standardised: multiplier (n/base)^-{a}{depth} on its output "
                 "(its rows are divided by their own std, so no init can carry it)",
                 layer, bias=mup.traced.params[bias].target if bias else None,
                 depth_exponent=a_L)
