"""Adam's eps per block of one torch tensor, given as a scale of the tensor's gradient.

A fused layer's blocks (the row blocks of a split of its output, the column blocks of a
concatenation it reads) are params of their own in the program, and µP may give them different
Adam eps values: FocalNet's ``projection_in`` makes the query and context (hidden: gradient
entries Θ(1/n)) and a few gates per pixel (readouts: Θ(1)). torch's Adam has one eps per param
group, so one per tensor. But Adam sees a gradient only through m/(√v + eps): a gradient c·g
gives m' = c·m, v' = c²·v and the step lr·m/(√v + eps/c), Adam's own step with eps/c. So a
block whose gradient is multiplied by c = e/e_b steps exactly as with eps·e_b in a group of eps·e:
the tensor's group takes the eps of its largest block (e), and every other block's gradient is
multiplied by its c. At the base width every c is 1 and no hook is registered.

That holds for Adam and for AdamW (its decay shrinks the param, not the gradient), not for an
L2 decay added to the gradient inside the step (``decay="coupled"``: λw enters after the
scale; groups.py refuses it), and for no other optimizer (SGD's and Muon's steps have no eps:
there a tensor's blocks must share every rate but the LR of a concatenation's column blocks,
columns.py). A clip of the gradient's norm sees
the scaled gradient: every block's entries then scale as the largest block's.

A tensor whose column blocks carry their LRs by a scale s of its input (columns.py) has the
gradient of its block b already s_b times W's: Adam's own step there has eps/s_b, so its
eps factor counts as e_b·s_b here, and the gradient's scale makes up the rest."""

from __future__ import annotations

import math

from ..errors import UsageError
from .columns import block_scale, column_block, column_scales
from .patches import groups_of
from .rows import row_range
from .values import ParamUse


def block_of(t, use: ParamUse):
    """The view of torch tensor ``t`` (the param ``use.target``) that the program's param
    ``use`` is: one row of a table, one expert's matrix, a concatenation's columns, a fused
    layer's rows (of every head's rows), or the whole tensor."""
    if use.index is not None:  # a lookup of one constant id: the row it reads
        return t[use.index]
    if use.expert is not None:  # one expert's matrix (and rows of it) in a 3-D tensor
        t = t[use.expert]
    t = column_block(t, use)  # a concatenation's part: its columns (columns.py)
    if use.rows is None:
        return t
    axis = 1 if use.transposed and t.dim() == 2 else 0
    groups = groups_of(use.groups, use.group_rows, t.shape[axis])
    if groups > 1:  # the same block of every head's rows (a fused qkv laid out per head)
        t = t.unflatten(axis, (groups, -1))
        axis += 1
    lo, hi = row_range(use.rows, use.row_consts, t.shape[axis])
    return t.narrow(axis, lo, hi - lo)


def eps_blocks(mup, model, base_depth: int | None = None) -> tuple[dict, dict]:
    """(torch param name -> the factor on Adam's base eps of its group, torch param name -> the
    scale of its gradient, for each tensor whose blocks need different eps values) at this
    model's width and depth. The scale is 1 on the tensor's largest block (whose eps the group
    takes) and e/e_b on a block b of eps factor e_b. A tensor two of whose program params
    overlap (a table tied to a readout) with different eps is refused: no gradient scale gives
    one entry two eps values."""
    import torch

    r = mup.width_of(model) / mup.traced.base_width
    rd = mup._depth_ratio(model, base_depth)
    cols = column_scales(mup, model, base_depth)  # their blocks' gradients times s already
    found: dict[int, tuple[str, list]] = {}  # by tensor: a tied one may go by two names
    for name, use, _ in mup._uses(model):
        if name not in mup.eps_exp:
            continue
        m = r ** -float(mup.eps_exp[name]) * rd ** -float(mup.eps_exp_L.get(name, 0))
        m *= block_scale(cols, use)
        t = model.get_parameter(use.target)
        found.setdefault(id(t), (use.target, []))[1].append((name, use, m))
    factors: dict[str, float] = {}
    scales: dict = {}
    for target, blocks in found.values():
        if all(math.isclose(m, blocks[0][2]) for _, _, m in blocks):
            factors[target] = blocks[0][2]
            continue
        t = model.get_parameter(target).detach()
        ref = max(blocks, key=lambda b: block_of(t, b[1]).numel())[2]  # the first largest
        # in float64 whatever the model's dtype: the hook casts it to the gradient's, so a
        # model moved to float64 after apply reads each block's factor (1/9) exactly
        scale = torch.ones_like(t, dtype=torch.float64)
        seen = torch.zeros_like(t, dtype=torch.bool)
        for _, use, m in blocks:
            view, held = block_of(scale, use), block_of(seen, use)
            c = ref / m
            if held.any() and not bool((view[held] == c).all()):
                said = ", ".join(f"{n} x{b:.4g}" for n, _, b in blocks)
                raise UsageError(
                    f"{target}: program params that share its entries need different Adam eps "
                    f"factors ({said}), and one entry of a tensor has one eps",
                    use.span,
                    help="give each use its own tensor (untie the weights), or train with an "
                    "optimizer without eps (SGD, Lion)",
                )
            view.fill_(c)
            held.fill_(True)
        factors[target] = ref
        scales[target] = scale
    return factors, scales


def grad_hook(scale):
    """A tensor hook multiplying the gradient by ``scale`` (moved to the gradient's device and
    dtype once: a model moved after ``apply`` keeps its param objects, and so its hooks)."""
    held = [scale]

    def scaled(grad):
        s = held[0]
        if s.device != grad.device or s.dtype != grad.dtype:
            s = held[0] = s.to(grad.device, grad.dtype)
        return grad * s

    return scaled


def scale_lines(mup, model, scales: dict, factors: dict, rows, cols: dict) -> list[str]:
    """The report's lines of the gradient scales: each block's factor where it is not 1
    (``rows(use)``: the block's rows and columns, as the report writes them), with the column
    scale s its gradient already carries (``cols``: columns.py)."""
    lines = []
    for _, use, _ in mup._uses(model):
        if use.target in scales:
            c = float(block_of(scales[use.target], use).flatten()[0])
            s = block_scale(cols, use)
            if c != 1.0:
                by = f" x{s:.4g} (its column scale)" if s != 1.0 else ""
                lines.append(
                    f"gradient of {use.target}{rows(use)} x{c:.4g}{by}: its Adam eps is its "
                    f"group's / {c * s:.4g} = base eps x{factors[use.target] / (c * s):.4g}")
    return lines
