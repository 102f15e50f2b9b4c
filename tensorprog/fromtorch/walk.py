"""The walk of one exported graph: dispatch of each node to its op handler, the program's names,
size slots and params, and the materialising of lazy values into program statements."""

from __future__ import annotations

import dataclasses
import operator
import re
from fractions import Fraction

from ..errors import TraceError
from ..lang.lower import FUNCTIONS
from .clamped import ClampedRows
from .gained import Gained
from .identify import RECOGNISED, identify
from .inplace import in_place
from .inputs import probe_ids
from .ops_codebooks import Stacked
from .ops_conv import Padded
from .ops_grid import Joint, Laid
from .ops_grn import GRN_VALUES
from .ops_rescale import Rescaled
from .ops_sink import SINK_VALUES, RowMax
from .ops_standardise import ROW_VALUES, RowPair, Standardised, refuse_mixed_standardised
from .ops_tconv import SplitConv, Taps
from .values import (
    Affine,
    Aux,
    Blank,
    Centered,
    Computed,
    Conc,
    FixedTable,
    Given,
    HeadCat,
    HeadGate,
    Joined,
    KVRepeat,
    L2Norm,
    Looked,
    Mean,
    MeanSq,
    OneToken,
    OverTokens,
    Paired,
    PairHalf,
    PairStack,
    ParamFn,
    ParamUse,
    Parts,
    PEntry,
    Pointwise,
    PRef,
    Probs,
    RopeTerm,
    Rotated,
    RowMean,
    Scores,
    Slot,
    Spread,
    Strided,
    Sub,
    Tok,
    TokensFrom,
    Trace,
    Vec,
    Zeroed,
    ids_kept,
)
from .where import (
    CHECK_OPS,
    casts_to_integers,
    module_of,
    op_name,
    reaching_the_output,
    refuse,
    refuse_empty_part,
    refuse_keywords,
    strip_prefix,
    user_span,
)

_RESERVED = {"width", "depth", "dim", "input", "param", "scale", "output", "block", "return",
             "repeat", "tokens", "positions", "image", "patches", "n", "tok", "pos",
             *FUNCTIONS}
IDENTITY_OPS = {
    "contiguous",
    "alias",
    "clone",
    "dropout",
    # nn.Dropout(inplace=True) (MobileNet's classifier): the graph is exported in eval mode, where
    # dropout changes no entry, so in place or not it is the value itself, whoever else reads it
    "dropout_",
    "to",
    "type_as",
    "_to_copy",
    "feature_dropout",
    "lift_fresh_copy",
}
# ops through which no gradient flows: as identity, derive would claim updates for the params
# before them, which never get a gradient
_GRAD_STOPS = {"detach", "detach_", "wrap_with_set_grad_enabled"}  # the last: torch.no_grad
SYMBOLIC = (
    Vec, PRef,
    PEntry,  # one entry of a 1-D param, read as a number (ops_entries.py)
    Tok, Pointwise,
    Affine, Gained,  # Gained: a layer's output times a fixed gain (ops_fixedgain.py)
    Scores,
    Probs,
    MeanSq,
    L2Norm,  # F.normalize's divisor (ops_norm.py)
    Parts,
    Rotated,
    RopeTerm,
    KVRepeat,
    Sub,
    Mean,
    Centered,
    Strided,
    PairStack,
    Stacked,  # readouts stacked, read by the output alone (ops_codebooks.py)
    Zeroed,
    TokensFrom,
    OneToken,  # a class token split off the tokens (ops_classtoken.py)
    PairHalf,
    HeadCat,  # multi-head latent attention's parts of each head (ops_mla.py)
    Blank,
    Slot,
    Paired,  # a head's coordinate pairs, a complex rotary's (ops_complex.py)
    Spread,  # a vector param viewed per head (ops_spread.py)
    HeadGate,  # one number per head given an axis to multiply its head (ops_gate.py)
    ParamFn,  # a function of a param alone: Swin V2's temperature (ops_temperature.py)
    RowMean,  # an image's mean over its rows, before one over its columns (ops_conv.py)
    OverTokens,  # a vector per sequence given back a token axis (ops_global.py)
    *SINK_VALUES,  # an attention sink's pieces, a softmax stabilised by hand (ops_sink.py)
    *GRN_VALUES,  # a global response normalization's pieces (ops_grn.py)
    Rescaled,  # a vector times another's RMS, on the way to a norm (ops_rescale.py)
    Padded,  # an image padded by zeros, for convolutions and HGNet's pool (ops_conv.py)
    Laid,  # a param's entries laid out anew: a table of positions as a grid (ops_grid.py)
    Joint,  # several params' entries laid out together (ops_grid.py, ops_axial.py)
    Standardised,  # a param whose rows are standardised, for a kernel (ops_standardise.py)
    *ROW_VALUES,  # the statistics of a param's rows, on the way to it (ops_standardise.py)
    Taps, SplitConv, ClampedRows,  # ops_tconv.py's conv1d parts; a clamp, split (ops_pointwise)
)

VIEW_OPS = {"view", "reshape", "_unsafe_view", "flatten", "unflatten", "view_as", "reshape_as"}


class Walker:
    """Walks one exported graph: names, size slots, params, lazy values, and the dispatch of
    each aten op to its ``op_<name>`` method (defined by the op mixins, see convert.py)."""

    def __init__(self, ep, base_params: dict):
        self.ep = ep
        self.base = base_params  # target -> ("const", value) | ("normal", std) at the base
        self.out = Trace()
        self.env: dict = {}
        self.names: set[str] = set(_RESERVED)
        self.declared_params: set[str] = set()
        self.tokens_vocab: int | None = None
        self.tokens_seq: int | None = None
        self.prepended: dict[int, str] = {}  # longer sequences of learned tokens (ops_encoder)
        # attention nodes whose values have a head dim of their own at another width: written
        # mix(p, v, dv) here too, where dv happens to be the queries' head dim (ops_attention)
        self.own_heads: frozenset[str] = frozenset()
        # inputs other than the token ids (keyword masks, token-type ids), by placeholder: their
        # names and values on the CPU, constants of the trace as masks computed from the ids are
        self.given: dict = {}
        self.id_inputs: dict[str, str] = {}  # such an input read as ids -> its program name
        self._rows: dict[str, tuple] = {}  # program param -> (torch rows, offset added)
        self._std: dict[str, float | None] = {}  # program param -> its standardisation's eps
        self._made: dict[str, Vec] = {}  # node -> the vector emitted for its lazy value
        # nodes whose number keeps its slot where it is 1: one that another width multiplies
        # by another number (MiniCPM's logits over hidden_size / dim_model_base, 1 at 256)
        self.keep_coefficients: frozenset[str] = frozenset()

    # -- slots and names ---------------------------------------------------------------------
    def dim(self, size: int) -> str:
        self.out.slots.append(("dim", size))
        return f"{{s{len(self.out.slots) - 1}}}"

    def fresh(self, base: str) -> str:
        name = re.sub(r"\W", "_", base).strip("_") or "v"
        if name[0].isdigit() or name in self.names:
            name = f"v_{name}"
        k, cand = 1, name
        while cand in self.names:
            k, cand = k + 1, f"{name}_{k}"
        self.names.add(cand)
        return cand

    # -- params ------------------------------------------------------------------------------
    def param(self, ref: PRef, node, *, lookup: bool = False,
              fan_in: str | None = None) -> tuple[str, bool]:
        """The program param for a torch matrix applied as W @ x (program layout [out, in]);
        returns (name, transposed use). ``fan_in`` names the dim it is applied over when that is
        not its own size (a position table read at positions 0..T-1 only)."""
        # torch linear applies W: [out, in]; an embedding table [V, n] is applied as [n, V]
        as_applied_t = ref.t ^ lookup  # True: program [out, in] is the torch tensor transposed
        if any(use.target == ref.target and self._std.get(name) != ref.std
               for name, use in self.out.params.items()):
            raise refuse_mixed_standardised(node, ref)
        for name, use in self.out.params.items():
            if use.target == ref.target and use.expert == ref.expert and \
                    self._rows.get(name) == (ref.rows, ref.offset, ref.period, ref.cols):
                seen = (module_of(node), node.name)
                if node.name != use.node and seen not in use.also:
                    # another application of it: a layer tied to it (columns.py hooks each), or
                    # its own module called again (a query patch scales every call: apply.py)
                    use.also += (seen,)
                return name, use.transposed != as_applied_t
        if ref.rows and ref.rows[0] == ref.rows[1]:  # a split's empty part, read: nothing to name
            raise refuse_empty_part(node, ref.target)
        part = round(ref.rows[0] / (ref.rows[1] - ref.rows[0])) if ref.rows else 0
        part = ref.part if ref.part is not None else part
        name = self.fresh(
            strip_prefix(ref.target).replace(".", "_") + (f"_part{part}" if ref.rows else "")
            + (f"_e{ref.expert}" if ref.expert is not None else "")
            + (f"_cols{ref.cols.index}" if ref.cols else "")  # a concatenation's part
        )
        torch_shape = list(ref.shape)
        prog = torch_shape[::-1] if as_applied_t else list(torch_shape)
        total = torch_shape[1] if as_applied_t else torch_shape[0]
        groups = total // ref.period if ref.period else 1  # a block of every head's rows
        if ref.rows:
            prog[0] = (ref.rows[1] - ref.rows[0]) * groups
        if ref.cols:  # the columns that multiply one part of a concatenation (ops_concat.py)
            prog[1 if len(prog) == 4 else -1] = ref.cols.hi - ref.cols.lo  # a kernel's: in
        rows = None
        if ref.rows:  # as fractions of the rows (of each group's), which scale with the width
            period = ref.period or total
            rows = (Fraction(ref.rows[0], period), Fraction(ref.rows[1], period))
        self._rows[name] = (ref.rows, ref.offset, ref.period, ref.cols)
        self._std[name] = ref.std
        self.out.params[name] = ParamUse(ref.target, rows, as_applied_t, module_of(node), node.name,
                                         expert=ref.expert, cols=ref.cols, span=user_span(node),
                                         offset=ref.offset)
        if ref.rows:  # the numbers, for blocks whose share changes with the width (rows.py)
            self.out.params[name].row_numbers = (*ref.rows, ref.period or total)
        if ref.period:
            self.out.params[name].groups, self.out.params[name].group_rows = groups, ref.period
        dims = [self.dim(s) for s in prog]
        if fan_in is not None:
            dims[-1] = fan_in
        init = self.base.get(ref.target, ("normal", 1.0))
        if ref.offset:  # the program's param is offset + w: its init is offset + w's
            init = (init[0], init[1] + ref.offset)
        tail = f" = {init[1]:g}" if init[0] == "const" and len(prog) == 1 else ""
        tail += f" standardised({ref.std!r})" if ref.std is not None else ""
        self.out.decls.append(f"param {name} : [{', '.join(dims)}]{tail}")
        return name, False

    def vector_param(self, ref: PRef, node) -> str:
        name, _ = self.param(ref, node)
        return name

    # -- materialising lazy values ------------------------------------------------------------
    def emit_vector(self, node_name: str, expr: str, producer: tuple | None = None) -> str:
        """The statement ``name = expr`` of a fresh name, recorded as the program vector that
        stands for torch node ``node_name``'s value (what check compares at both widths), and
        with ``producer``, the (weight, bias) of the ``W @ x + b`` it is (a multiplier on it
        folds into them); returns the name."""
        name = self.fresh(node_name)
        self.out.stmts.append(f"{name} = {expr}")
        self.out.vectors[name] = (node_name, "out")
        if producer is not None:
            self.out.producers[name] = producer
        return name

    def vec(self, v, node) -> Vec:
        if isinstance(v, Vec):
            return v
        if isinstance(v, Affine):  # once per value, however many times it is consumed
            if v.node not in self._made:
                self._made[v.node] = self.emit_affine(v, v.node)
            made = self._made[v.node]
            return Vec(made.name, v.tags, made.dim, v.dh or made.dh)
        if isinstance(v, Pointwise):
            found = identify(v.f)
            # relu(x)², x² (a product of copies), c * tanh(x / s): ops_pointwise.py
            made = self.emit_form(v, node) if found is None else None
            if made is not None:
                return made
            if found is None:  # at the chain's last op: the line that wrote the function
                raise refuse(
                    self.by_name.get(v.node, node),
                    f"a coordinatewise function that is none of {', '.join(RECOGNISED)}, "
                    "nor an integer power of one",
                )
            fn, c = found
            expr = v.src.name if fn == "identity" else f"{fn}({v.src.name})"
            if expr == v.src.name and abs(c - 1) <= 1e-9 and v.node not in self.keep_coefficients:
                self.out.bare_nodes.add(v.node)  # (no slot here: convert.agreed_forms)
                return v.src
            key = (v.node, expr, round(c, 12))  # once per value, however often consumed
            if key not in self._made:
                made = self.emit_times(v, node, c, expr, v.src.name if fn == "identity" else "")
                if fn == "identity" and v.src.name in self.out.producers:
                    # c * (W @ x + b) is linear in W and b too: a multiplier on it (attention's
                    # scale on a query written q * dh ** -0.5) folds into them as well
                    self.out.producers[made.name] = self.out.producers[v.src.name]
                self._made[key] = made
            return self._made[key]
        if isinstance(v, Probs):
            raise refuse(
                node,
                f"{node.target} on attention weights (only a matmul with the values is supported)",
            )
        if isinstance(v, TokensFrom):  # a mean or tail(h, T) reads h[:, k:] (ops_pool.py)
            return self.token_tail(node, v)
        if isinstance(v, OneToken):  # a split-off class token (ops_classtoken.py)
            raise self.refuse_one_token(node, v)
        if isinstance(v, Rescaled):  # x * RMS(e) read as a vector (ops_rescale.py)
            return self.emit_rescaled(v)
        if isinstance(v, PEntry):  # p[i] read as anything but a gain (ops_entries.py)
            raise self.refuse_entry(node, f"{op_name(node)} of")
        raise refuse(node, f"{node.target} on a value that is not a per-token vector")

    def coefficient(self, c: float, node, src: str) -> str:
        """The slot of a number multiplying ``src`` (or a function of it, ``src`` empty): the
        same at both widths it is written as it is; one the forward computes from the width
        (``sqrt(d_model)``) is read at both (trace.py)."""
        self.out.slots.append(("coef", c))
        self.out.coefs[len(self.out.slots) - 1] = {"x": src, "span": user_span(node)}
        return f"{{s{len(self.out.slots) - 1}}}"

    def emit_times(self, v: Pointwise, node, c: float, expr: str, src: str = "",
                   slot: bool | None = None) -> Vec:
        """The vector ``c * expr`` of the lazy value ``v`` (of v's source's shape): c is a
        coefficient slot at the line that multiplies (it may change with the width), whose
        "out" is this vector, so check can read what it multiplies there; ``src``: the vector c
        multiplies, empty under a function (coefficient). No slot where c is 1, unless
        ``slot``."""
        if slot is None:
            slot = abs(c - 1) > 1e-9 or v.node in self.keep_coefficients
        (self.out.coefficient_nodes if slot else self.out.bare_nodes).add(v.node)
        if slot:
            expr = f"{self.coefficient(c, self.by_name.get(v.node, node), src)} * {expr}"
            index = len(self.out.slots) - 1
        name = self.emit_vector(v.node, expr)
        if slot:
            self.out.coefs[index]["out"] = name
        return Vec(name, v.src.tags, v.src.dim, v.src.dh)

    def emit_affine(self, a: Affine, node_name: str) -> Vec:
        if isinstance(a.x, Joined):  # W @ cat(a, b): a sum of its column blocks (ops_concat)
            return self.emit_joined(a, node_name)
        w, trans = self.param(a.w, self._node(a.layer or a.node))
        rows = a.w.rows
        dim = (rows[1] - rows[0]) if rows else (a.w.shape[1] if a.w.t else a.w.shape[0])
        if rows and a.w.period:  # the block of every head's rows
            dim *= (a.w.shape[1] if a.w.t else a.w.shape[0]) // a.w.period
        expr = f"{w}{'.T' if trans else ''} @ {a.x.name}"
        if trans:  # a tied matrix read back: its multiplier differs from the lookup's
            self.out.slots.append(("scale", 1.0))
            sc = self.fresh(f"tie_{node_name}")
            self.out.decls.append(f"scale {sc} = {{s{len(self.out.slots) - 1}}}")
            self.out.scales[sc] = {
                "tied": w,
                "slot": len(self.out.slots) - 1,
                "module": module_of(self._node(a.layer or a.node)),
                "node": a.layer or a.node,
                # the layer's own bias, which apply's patch keeps out of the multiplier
                "bias": a.b.target if a.b is not None else None,
            }
            expr = f"{sc} * ({expr})"
        bias = self.vector_param(a.b, self._node(a.layer or a.node)) if a.b is not None else None
        if bias:
            expr += f" + {bias}"
        return Vec(self.emit_vector(node_name, expr, (w, bias)), a.tags, dim)

    def _node(self, name):
        return self.by_name[name]

    # -- the walk ----------------------------------------------------------------------------
    def run(self) -> Trace:
        import torch

        sig = self.ep.graph_signature
        kinds = {s.arg.name: s for s in sig.input_specs}
        self.by_name = {n.name: n for n in self.ep.graph.nodes}
        self.live = reaching_the_output(self.ep.graph)
        for node in self.ep.graph.nodes:
            if node.op == "placeholder":
                spec = kinds[node.name]
                val = node.meta["val"]
                if spec.kind.name == "PARAMETER":
                    self.env[node.name] = PRef(spec.target, tuple(val.shape))
                elif spec.kind.name == "CONSTANT_TENSOR" and self._number(spec.target):
                    # a number the forward made a tensor (torch.tensor(d_model ** 0.5))
                    # (its value from a CPU export where the graph's is on the meta device)
                    self.env[node.name] = Conc(getattr(self, "scalars", {}).get(
                        spec.target, self.ep.constants[spec.target]))
                elif spec.kind.name == "CONSTANT_TENSOR" and self._id(spec.target) is not None:
                    # an id the forward made a tensor (Gemma-3's 0 put in place of image
                    # tokens): a known constant, so the ids it edits stay known
                    self.env[node.name] = Conc(self._id(spec.target))
                elif spec.kind.name == "BUFFER" and self._scalar(spec.target) is not None:
                    # a number held in a buffer (HF Gemma's embed_scale, sqrt(hidden_size))
                    self.env[node.name] = Conc(self._scalar(spec.target))
                elif spec.kind.name == "BUFFER" and self._ids(spec.target) is not None:
                    # ids the model holds itself (HF's position_ids, an arange, and
                    # token_type_ids, zeros): known constants, so a lookup of them is read as
                    # positions or as one row of its table (ops_linear.py)
                    self.env[node.name] = Conc(self._ids(spec.target))
                elif spec.kind.name == "BUFFER" and self._mask(spec.target) is not None:
                    # a 0/1 float mask the model holds (OpenAI GPT's causal "bias"): a known
                    # constant, so a product of the logits with it is read (ops_attention.py)
                    self.env[node.name] = Conc(self._mask(spec.target))
                elif spec.kind.name == "USER_INPUT" and not isinstance(val, torch.Tensor):
                    # None or a number (an optional mask left out): export bakes it into the
                    # graph as a constant, so it is no input of the program
                    self.env[node.name] = Aux()
                elif spec.kind.name == "USER_INPUT" and node.name in self.given:
                    name, value = self.given[node.name]
                    self.env[node.name] = Given(value, name)
                elif spec.kind.name == "USER_INPUT" and val.dtype.is_floating_point:
                    self.env[node.name] = self.float_input(node, val)  # an image: ops_conv.py
                elif spec.kind.name == "USER_INPUT":
                    if val.dtype not in (torch.long, torch.int32, torch.int64):
                        raise TraceError(
                            f"input {node.name} is {val.dtype}: only token ids "
                            "(integer tensors) can be traced for now",
                            help="pass token ids as the example inputs",
                        )
                    self.env[node.name] = Tok(("tok",) * val.dim())
                    self.tokens_seq = int(val.shape[-1])
                else:  # a buffer of several floats (a mask, a table): named by a refusal
                    buffer = spec.kind.name == "BUFFER" and strip_prefix(spec.target)
                    # its entries, where read: a lookup at the positions reads them (ops_tables)
                    table = self.fixed_value(spec.target) if buffer else None
                    self.env[node.name] = Aux(buffer or "") if table is None else FixedTable(
                        buffer, table)
            elif node.op == "call_function":
                try:
                    self.edited_read(node)  # ids edited before a lookup (ops_place.py)
                    value = self.call(node)
                except TraceError:
                    if node.name in self.live:
                        raise
                    # what no output reads (SigLIP's attention-pooling head, whose output its
                    # image classifier leaves unused) cannot reach the program: what it could
                    # not say is no refusal, and the params before it are reported unused
                    value = Aux()
                # a value a cast passes on (x.float()) keeps its node: its readers share one
                # vector, so a width constant in it multiplies one (HF Gemma 4's embed_scale)
                if isinstance(value, Pointwise) and not (node.args and isinstance(
                        node.args[0], type(node)) and self.env.get(node.args[0].name) is value):
                    value = Pointwise(value.src, value.f, node.name)
                self.env[node.name] = value
            elif node.op == "output":
                # every output the params reach is one of the program's (a second head left
                # out would keep its SP init and LR); param-free ones (masks, ids) have no µP
                outs = [a for a in node.args[0] if a is not None]
                for a in outs:
                    value = self.env[a.name]
                    if isinstance(value, (Tok, Conc, Aux)) or value is None:
                        continue
                    if isinstance(value, Stacked):  # one output per part (ops_codebooks.py)
                        self.stacked_output(self.by_name[a.name], value)
                        continue
                    self.batch_major_output(self.by_name[a.name], value)  # (ops_timemajor)
                    v = self.vec(value, node)
                    if v.name not in self.out.outputs:
                        self.out.outputs.append(v.name)
        return self.out

    def _scalar(self, target):
        """A one-entry float buffer's value: given (read from a CPU build), or the graph's own
        where it was exported with real tensors; None if unknown (on the meta device)."""
        value = getattr(self, "scalars", {}).get(target)
        if value is None:
            value = self.ep.state_dict.get(target, self.ep.constants.get(target))
        ok = value is not None and value.numel() == 1 and value.is_floating_point()
        return value if ok and value.device.type != "meta" else None

    def _ids(self, target):
        """An integer buffer's value: given (read from a CPU build, trace.py), or the graph's
        own where it was exported with real tensors (the probe of a built model, check.py),
        on the CPU, where the walk computes constants; None if unknown (on the meta device)."""
        import torch

        value = getattr(self, "scalars", {}).get(target)
        if value is None:
            value = self.ep.state_dict.get(target, self.ep.constants.get(target))
        ok = value is not None and value.dtype in (torch.int64, torch.int32)
        return value.detach().cpu() if ok and value.device.type != "meta" else None

    def _mask(self, target):
        """A boolean buffer, or a float one of 0s and 1s (a mask): given (read from a CPU build,
        trace.py), or the graph's own where it was exported with real tensors; None for any
        other buffer."""
        import torch

        value = getattr(self, "scalars", {}).get(target)
        if value is None:
            value = self.ep.state_dict.get(target, self.ep.constants.get(target))
        if value is None or value.device.type == "meta":
            return None
        if value.dtype == torch.bool:  # a boolean mask (ImageGPT's causal "bias")
            return value.detach().cpu()
        if not value.is_floating_point():
            return None
        value = value.detach().cpu()
        return value if bool(((value == 0) | (value == 1)).all()) else None

    def _id(self, target):
        """A one-entry integer constant of the graph (or a 1-D one of a few: the ids a pick
        keeps), on the CPU (given, read from a CPU export, where the graph's is on the meta
        device: TAPAS's bound on its positions); None for any other."""
        import torch

        value = getattr(self, "scalars", {}).get(target, self.ep.constants.get(target))
        ok = value is not None and value.dim() <= 1 and 0 < value.numel() <= 16 and \
            value.dtype in (torch.int64, torch.int32)  # (or a few: ids a pick keeps)
        return value.detach().cpu() if ok and value.device.type != "meta" else None

    def _number(self, target) -> bool:
        value = self.ep.constants.get(target)
        return value is not None and value.numel() == 1 and value.is_floating_point()

    def args(self, node):
        def get(a):
            if hasattr(a, "name") and a.name in self.env:
                return self.env[a.name]
            if isinstance(a, (list, tuple)):
                return type(a)(get(x) for x in a)
            return a

        return [get(a) for a in node.args], {k: get(v) for k, v in node.kwargs.items()}

    def call(self, node):
        if not node.users and not op_name(node).endswith("_") and op_name(node) not in CHECK_OPS:
            # a value nothing reads (BART's inputs_embeds[:, :, -1], taken for its shape only,
            # which export keeps as a node): it cannot reach the program, whatever it is
            return Aux()
        args, kwargs = self.args(node)
        if node.target is operator.getitem:
            if isinstance(args[0], Parts):
                item = args[0].items[args[1]]
                # a head's half (ops_layout._rotary_halves); a sequence's first token and the
                # tokens after it (ops_classtoken.py)
                if isinstance(item, (Sub, OneToken, Vec, PRef, PEntry)):
                    return item
                return self.head_part(dataclasses.replace(item, node=node.name), node)
            if isinstance(args[0], (Conc, Aux)):
                return self.concrete(node, args, kwargs)
            if isinstance(args[0], RowMax) and args[1] == 0:  # max(dim).values (ops_sink.py)
                return args[0]
            if isinstance(args[0], RowPair):  # var_mean's var or mean (ops_standardise.py)
                return args[0].items[args[1]]
            raise refuse(node, "indexing a traced value")
        op = op_name(node)
        flat = [
            x
            for a in list(args) + list(kwargs.values())
            for x in (a if isinstance(a, (list, tuple)) else [a])
        ]
        symbolic = [x for x in flat if isinstance(x, SYMBOLIC)]
        if symbolic and all(isinstance(x, Tok) for x in symbolic) and op != "embedding":
            # (transposed too: XLNet's seq-first ids, input_ids.transpose(0, 1), whose every
            # entry is still a token id, looked up entry by entry)
            if op in VIEW_OPS | IDENTITY_OPS | _GRAD_STOPS | {"transpose", "permute", "t"} \
                    and isinstance(args[0], Tok):  # (tokens first: ops_timemajor.py)
                return self.time_major_tok(node, op, args[0])
            # the whole of the ids (XLM's input_ids[:, -slen:] with no cache): still the ids,
            # not a constant computed from the zeros the trace puts in their place
            if op == "slice" and isinstance(args[0], Tok) and self._shape(node) == self._shape(
                    node.args[0]):
                return args[0]
            # the ids with the entries a condition picks set to one id (Granite Speech's audio
            # placeholders set to 0 before the lookup: ids[ids == audio] = 0, or where(ids ==
            # audio, 0, ids)): still the token ids, not one constant id computed from the
            # zeros the trace puts in their place (a lookup of it was traced as a bias)
            kept = ids_kept(node, op, args)
            if kept is not None and self._shape(node) == self._shape(node.args[kept]) and not \
                    node.meta["val"].dtype.is_floating_point:
                self.edited_ids(node, node.args[kept])  # where the example's differ (ops_place)
                return Tok(tuple(args[kept].tags))  # laid out as they are
            return self.concrete(node, args, kwargs)  # e.g. a padding mask from the ids
        if not symbolic:
            # ids given as an input, viewed to their own shape (MVP's decoder_input_ids.view(-1,
            # T)): still that input, which a lookup reads as ids (not a constant of its values)
            if op in VIEW_OPS and isinstance(args[0], Given) and \
                    self._shape(node) == self._shape(node.args[0]):
                return args[0]
            return self.concrete(node, args, kwargs)
        if op in CHECK_OPS:
            return None
        if any(isinstance(x, Paired) for x in symbolic):  # a complex rotary (ops_complex.py)
            return self.complex_op(node, op, args)
        method = getattr(self, f"op_{op}", None)
        if method is None and op.endswith("_") and op not in _GRAD_STOPS:
            method = in_place(self, node, op)
        if op in _GRAD_STOPS:
            kept = self.no_grad_region(node) if op.startswith("wrap") else None
            if kept is not None:  # its inputs as they were (ops_nograd.py)
                return kept
            raise self.refuse_grad_stop(node, op)
        if op in IDENTITY_OPS:
            if casts_to_integers(node):  # (where.py): rounds, so no identity
                raise refuse(node, "a cast to an integer type")
            return args[0]
        if any(isinstance(x, ROW_VALUES) for x in flat):  # (ops_standardise.py)
            return self.row_stat_op(node, op, args, kwargs)
        std = next((x for x in flat if isinstance(x, Standardised)), None)
        if std is not None and op != "conv2d":  # only a kernel reads it (ops_standardise.py)
            raise self.refuse_standardised(node, std)
        if any(isinstance(x, (Laid, Joint)) for x in flat):  # (ops_grid.py)
            return self.laid_op(node, op, args, kwargs)
        if op in VIEW_OPS:
            return self.view(node, args[0])
        if method is None:
            sliced = next((x for x in flat if isinstance(x, TokensFrom)), None)
            if sliced is not None:  # h[:, :1].squeeze(1): the slice is what has no reader
                raise self.refuse_token_slice(node, sliced)
            one = next((x for x in flat if isinstance(x, OneToken)), None)
            if one is not None:
                raise self.refuse_one_token(node, one)
            raise refuse(node, f"the op {op}")
        refuse_keywords(node, op, method, kwargs)  # a keyword no rule reads (where.py)
        return method(node, *args, **kwargs)

    def concrete(self, node, args, kwargs):
        import torch

        flat = [
            x
            for a in list(args) + list(kwargs.values())
            for x in (a if isinstance(a, (list, tuple)) else [a])
        ]
        trig = self.trig_table(node, args, flat)  # (ops_rotary.py)
        if trig is not False:
            return trig
        looked = self.table_lookup(node, args)  # a fixed table's rows at the positions
        if looked is not None:
            return looked
        # named after a buffer it reads; a fixed table's entries are read on (ops_tables.py)
        named = next((Aux(x.buffer, lost=x.lost) for x in flat if isinstance(x, Aux) and (
            x.buffer or x.lost)), Aux())
        # a value computed from a table's entries is computed on (a complex rotary's table)
        tables = any(isinstance(x, (FixedTable, Computed)) for x in flat)
        if any(isinstance(x, Aux) and not isinstance(x, (FixedTable, Computed)) for x in flat):
            return named

        def val(a):
            if isinstance(a, Conc):
                return a.value
            if isinstance(a, (FixedTable, Computed)):
                return a.value
            if tables and getattr(a, "op", None) == "get_attr":  # a higher-order op's subgraph
                return self.on_cpu(a)  # (M2M-100's torch.no_grad: ops_tables.py)
            if isinstance(a, Tok):  # as laid out: transposed, tokens first (XLNet's)
                return self.laid_ids(self.tok_value, a)
            if isinstance(a, torch.device):
                return torch.device("cpu")
            if isinstance(a, (list, tuple)):
                return type(a)(val(x) for x in a)
            return a

        def probe(a):  # the value again with probe ids in the token ids' place
            if isinstance(a, (Conc, Computed)) and a.probe is not None:
                return a.probe
            if isinstance(a, Tok):
                return self.laid_ids(probe_ids(self.tok_value), a)
            if isinstance(a, (list, tuple)):
                return type(a)(probe(x) for x in a)
            return val(a)

        from_ids = self.tok_value is not None and any(
            isinstance(x, Tok) or (isinstance(x, (Conc, Computed)) and x.probe is not None)
            for x in flat)
        try:
            # the grad mode restored: torch.no_grad's higher-order op (wrap_with_set_grad_enabled
            # over ids alone, Phi-4-multimodal's) turns grad off and, failing here on its
            # subgraph, leaves it off for the whole process (every later backward then fails)
            with torch.set_grad_enabled(torch.is_grad_enabled()):
                value = node.target(*[val(a) for a in args],
                                    **{k: val(v) for k, v in kwargs.items()})
                # computed from the token ids: the value again with probe ids (ops_linear.py);
                # where that fails too the value stays unknown, never a constant of the zeros
                again = None if not from_ids else node.target(
                    *[probe(a) for a in args], **{k: probe(v) for k, v in kwargs.items()})
        except Exception:  # noqa: BLE001 - a value we cannot compute is simply unknown
            return named if tables else Aux()
        # from a fixed table: its rows at the positions, else unknown as before (ops_tables.py)
        out = self.table_rows(flat, value, named, node) if tables else self.keep_table(flat, value)
        if tables and again is not None and type(out) is not Looked:
            out = self.table_rows_probed(flat, again, out)  # positions from the ids (ops_tables)
        if again is not None and type(out) in (Conc, Computed):
            out.probe = again
        if type(out) is Conc:  # named by a refusal of it (ops_linear.py)
            out.given = next((x.input if isinstance(x, Given) else x.given for x in flat
                              if isinstance(x, Given) or isinstance(x, Conc) and x.given), "")
        return out
