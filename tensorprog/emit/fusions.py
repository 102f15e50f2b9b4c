"""The fusions ``forward`` computes in one torch call: attention (dot, scale, softmax and mix as
one ``scaled_dot_product_attention``) and a LayerNorm's gain and bias (one ``layer_norm``).

``vectors`` computes every value written out; ``forward`` fuses only where the fused call is the
same function, and ``needed`` says which instructions the outputs still depend on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..ir.functions import MUL
from ..ir.program import Dot, LinComb, Mix, Nonlin, Program


@dataclass(frozen=True)
class Attention:
    """``mix(softmax(scales * dot(q, k, over)), values)``, which ``forward`` computes in one
    ``scaled_dot_product_attention`` call; ``chain`` are the values it never materialises."""

    q: str
    k: str
    values: str
    over: str
    scales: tuple[str, ...]
    causal: bool
    chain: tuple[str, ...]
    grouped: bool = False  # keys or values with fewer heads than the queries
    value_head: str | None = None  # the values' head dim where it is not the queries' (over)

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.q, self.k, self.values, *self.scales)


@dataclass(frozen=True)
class Norm:
    """``gain * layernorm(x) [+ bias]``, which ``forward`` computes in one ``layer_norm`` call
    (as ``nn.LayerNorm`` does: one op saving its input, not three); ``chain`` as above."""

    x: str
    gain: str
    bias: str | None
    chain: tuple[str, ...]

    @property
    def reads(self) -> tuple[str, ...]:
        return (self.x, self.gain) + ((self.bias,) if self.bias else ())


def find_fusions(program: Program, body: Sequence) -> dict[str, Attention | Norm]:
    """The instructions ``forward`` computes fused, by output: attention (a Mix) and a
    LayerNorm's gain and bias (the sum, or the product where no bias is added). Fused only
    where every value of the chain is read by nothing else (``vectors`` still computes and
    returns them all), so the fused call is the same function."""
    producer = {ins.out: ins for ins in body}
    kept = set(program.outputs) | {b.ret for b in program.blocks}
    dims = program.value_dims

    def only_feeds(value: str, user) -> bool:
        return value not in kept and program.uses(value) == [user]

    def vector_param(name: str, like: str) -> bool:
        """A trained vector param of ``like``'s dim: a gain or bias layer_norm can take."""
        p = program.param_table.get(name)
        return (p is not None and not p.is_scale and len(p.shape) == 1
                and dims.get(like) is not None and p.shape[0] == dims[like])

    def norm(product) -> tuple[str, str, str] | None:
        """(x, gain, layernorm's output) where ``product`` is gain * layernorm(x)."""
        if not (isinstance(product, Nonlin) and product.fn == MUL and len(product.args) == 2):
            return None
        for ln_out, gain in (product.args, product.args[::-1]):
            ln = producer.get(ln_out)
            if (isinstance(ln, Nonlin) and ln.fn == "layernorm" and ln.over is None
                    and vector_param(gain, ln.out)
                    and only_feeds(ln.out, product)):
                return ln.args[0], gain, ln.out
        return None

    found: dict[str, Attention | Norm] = {}
    for ins in body:
        if isinstance(ins, LinComb) and len(ins.terms) == 2 and not ins.const and all(
                c == 1 for c, _ in ins.terms):
            for (_, prod), (_, bias) in (ins.terms, ins.terms[::-1]):
                product = producer.get(prod)
                ln = norm(product)
                if (ln and prod != bias and vector_param(bias, prod)
                        and only_feeds(prod, ins)):
                    found[ins.out] = Norm(ln[0], ln[1], bias, (prod, ln[2]))
                    break
            continue
        if isinstance(ins, Nonlin):
            ln = norm(ins)
            if ln:
                found[ins.out] = Norm(ln[0], ln[1], None, (ln[2],))
            continue
        if not isinstance(ins, Mix):
            continue
        mix = ins
        soft = producer.get(mix.weights)
        # a softmax with a sink (a second argument) has no fused kernel: computed as written
        if not (isinstance(soft, Nonlin) and soft.fn in ("softmax", "causal_softmax")
                and len(soft.args) == 1 and only_feeds(soft.out, mix)):
            continue
        logits = producer.get(soft.args[0])
        scales: tuple[str, ...] = ()
        dot = logits
        if isinstance(logits, Nonlin) and logits.fn == MUL and only_feeds(logits.out, soft):
            scaled = [a for a in logits.args if program.param_table.get(a) is None
                      or not program.param_table[a].is_scale]
            if len(scaled) != 1:
                continue
            scales = tuple(a for a in logits.args if a not in scaled)
            dot = producer.get(scaled[0])
        if not (isinstance(dot, Dot) and dot.over is not None and only_feeds(
                dot.out, logits if scales else soft)):
            continue
        chain = tuple(dict.fromkeys((soft.out, logits.out, dot.out)))
        table = program.dim_table
        key = {d: table[dims[d]].key() for d in (dot.left, dot.right, mix.values, mix.out)}
        grouped = key[dot.left] != key[dot.right] or key[mix.values] != key[mix.out]
        own = mix.head if mix.head and table[mix.head].key() != table[dot.over].key() else None
        found[mix.out] = Attention(dot.left, dot.right, mix.values, dot.over, scales,
                                    soft.fn == "causal_softmax", chain, grouped, own)
    # a product fused alone whose sum with a bias is fused too is part of that chain
    inner = {v for f in found.values() for v in f.chain}
    return {out: f for out, f in found.items() if out not in inner}


def needed(body: Sequence, results: Sequence[str], fused: dict[str, Attention | Norm],
            mentions) -> set[str]:
    """The outputs of ``body`` that ``results`` depend on, reading a fused instruction's
    ``reads`` in place of its chain; ``mentions(ins)`` names what an instruction reads."""
    need = set(results)
    for ins in reversed(body):
        if ins.out not in need:
            continue
        f = fused.get(ins.out)
        need.update(f.reads if f else mentions(ins))
    return need
