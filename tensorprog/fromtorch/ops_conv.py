"""Float inputs (an image, per-token vectors, vectors), convolutions, batch norm, pooling, and
an image cut into patches (a ViT's patch embedding).

An image-valued vector is a ``Vec`` whose torch axes are tagged ('tok', 'F', 'px', 'px'): the
batch, the channels (the vector's dim, which may grow with the width) and the two finite pixel
axes. The language's convolution ``K @ h`` is stride 1 and same-padded; a stride-2 one is the
stride-1 one read at every other pixel, ``subsample(K @ h)`` (exact: output pixel i of a
stride-s convolution padded by (k-1)/2 is pixel s·i of the stride-1 one). Any other geometry
(stride, padding per side, dilation; a zero pad folded in) is ``conv(K, h, s, t, b, l, r, d)``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ..errors import TraceError
from .ops_standardise import Standardised
from .ops_zeropool import padded_pool, zero_padded_max
from .values import Affine, Columns, Joined, Pointwise, PRef, RowMean, Vec
from .where import op_name, refuse, strip_prefix, user_span

IMAGE = ("tok", "F", "px", "px")
POOLED = ("tok", "F", "one", "one")  # a global pool kept its two axes, of size 1
GRID = ("tok", "F", "grid", "grid")  # a patch embedding's output: a vector per patch, in a grid


def is_image(v) -> bool:
    tags = getattr(v, "tags", None) or getattr(getattr(v, "src", None), "tags", None)
    return bool(tags) and any(t in tags for t in ("px", "one", "grid"))


def _then_mean(node, axis: int) -> bool:
    """Whether the one reader of ``node`` is a mean over ``axis`` alone, keeping it."""
    if len(node.users) != 1:
        return False
    (u,) = node.users
    dims = u.args[1] if len(u.args) > 1 else None
    keep = u.args[2] if len(u.args) > 2 else u.kwargs.get("keepdim", False)
    dims = list(dims) if isinstance(dims, (list, tuple)) else [dims]
    return op_name(u) == "mean" and bool(keep) and dims != [None] and [
        d % 4 for d in dims] == [axis]


class ConvOps:
    """Float inputs, convolutions, batch norm, pooling and patches."""

    # -- the input -----------------------------------------------------------------------------
    def float_input(self, node, val) -> Vec:
        """The forward's one float input: [B, C, H, W] an image, ``input img : image[C, H,
        W]`` (channels finite, the pixels finite); [B, T, P] per-token float vectors, ``input
        x : patches[T, P]``; [B, d] one vector per sample, ``input x : [d]``. A second float
        input, or one of other rank, is refused."""
        if val.dim() not in (2, 3, 4) or getattr(self, "float_name", None) is not None:
            raise TraceError(
                f"input {node.name} is a {val.dtype} tensor of shape {list(val.shape)}: float "
                "inputs are traced one per model, as an image [batch, channels, height, width], "
                "per-token vectors [batch, tokens, values] or vectors [batch, values]",
                help="pass token ids (an integer tensor), or one float tensor of those shapes, "
                "as the example inputs",
            )
        if val.dim() < 4:  # a float vector per sample, or per token: no pixels to cut
            self.float_name = "x"
            self.names.add("x")
            *lead, d = (int(s) for s in val.shape)
            if len(lead) == 1:
                self.out.decls.append(f"input x : [{self.dim(d)}]")
                return Vec("x", ("tok", "F"), d)
            seq = self.own_sequence("x", lead[1], d)  # the program's T, or its own
            self.out.decls.append(f"input x : patches[{seq}, {self.dim(d)}]")
            return Vec("x", ("tok", "tok", "F"), d)
        _, c, h, w = (int(s) for s in val.shape)
        self.float_name = "img"
        self.names |= {"img", "patch"}
        self.image_decl = len(self.out.decls)  # replaced where the image is cut into patches
        self.out.decls.append(f"input img : image[{self.dim(c)}, {self.dim(h)}, {self.dim(w)}]")
        return Vec("img", IMAGE, c)

    def own_sequence(self, name: str, length: int, values: int) -> str:
        """The sequence of a float per-token input: the program's T (trace.py's dim), or beside
        token ids (an image with a prompt, ops_place.py) one of its own, T_<name>, which
        sequences.py declares."""
        if not self.takes_ids():
            self.tokens_seq = length
            return "T"
        self.out.seq_inputs[name] = ("patches", length, values)
        return f"T_{name}"

    def patches(self, node, x: Vec, k: int) -> Vec:
        """The image input cut into non-overlapping k x k patches, as the language's float
        per-token input ``input patch : patches[T, P]``: T = (H/k)·(W/k) tokens of P = C·k·k
        values each (a patch embedding is then a matmul of finite fan-in P). Only the image
        input itself, read only this way, and a size k divides."""
        shape = tuple(node.args[0].meta["val"].shape)
        if x.tags == IMAGE and x.name != "img" and not (shape[2] % k or shape[3] % k):
            count = shape[2] * shape[3] // (k * k)
            raise refuse(
                node,
                f"an unfold of a feature map of {shape[2]}x{shape[3]} pixels inside the network "
                f"into patches of {k}x{k} (MobileViTV2's: [B, C·{k * k}, patches], each of the "
                f"{k * k} pixel offsets of a patch a sequence of the {count} patches, mixed "
                "by its attention apart from the others): the language cuts "
                "only the image input into patches (`input patch : patches[T, P]`), and reads a "
                "feature map's pixels as tokens only whole (tokens(h, T))",
                help="cut the image input into patches once, right at the input; inside the "
                "network read the pixels as tokens, x.flatten(2).transpose(1, 2), and attend "
                "over all of them (a model other than MobileViTV2's)",
            )
        if x.name != "img" or x.tags != IMAGE or _reads_image(self.out.stmts) or shape[2] % k \
                or shape[3] % k:
            raise refuse(
                node,
                f"patches of {k}x{k} pixels cut from a value that is not the image input read "
                f"only this way, or from an image of {shape[2]}x{shape[3]} pixels that {k} "
                "does not divide",
                help="cut the image input into patches once, right at the input (a Conv2d "
                "with stride equal to its kernel, or unfold with stride equal to its kernel)",
            )
        c, t = shape[1], (shape[2] // k) * (shape[3] // k)
        self.cut = node  # any later read of the image is refused (image_read_once)
        seq = self.own_sequence("patch", t, c * k * k)  # one token per patch
        self.out.decls[self.image_decl] = f"input patch : patches[{seq}, {self.dim(c * k * k)}]"
        return Vec("patch", ("tok", "tok", "F"), c * k * k)

    # -- convolutions --------------------------------------------------------------------------
    def op_conv2d(self, node, x, w, b=None, stride=(1,), padding=(0,), dilation=(1,), groups=1):
        std = w if isinstance(w, Standardised) else None
        w = self.standardised_kernel(node, w)  # a PRef marked with its eps (ops_standardise.py)
        if not isinstance(w, PRef) or (b is not None and not isinstance(b, PRef)):
            raise refuse(node, "a convolution whose kernel is not a param")
        if std is not None and (isinstance(x, Joined) or groups != 1):
            raise self.refuse_standardised(node, std)  # a block of its rows or columns
        if isinstance(x, Joined) and groups == 1:  # images concatenated along their channels
            return self._joined_conv(node, x, w, b, stride, padding, dilation)
        if groups != 1:  # a depthwise convolution, or grouped channels the language has not
            return self._depthwise(node, x, w, b, stride, padding, dilation, groups)
        x, pads = (x.vec, x.pads) if isinstance(x, Padded) else (self.vec(x, node), None)
        stride, padding, dilation = (_pair(a) for a in (stride, padding, dilation))
        if std is not None and x.tags == POOLED:
            raise self.refuse_standardised(node, std)
        if x.tags == POOLED and groups == 1 and pads is None:
            return self._pooled_conv(node, x, w, b, stride, padding, dilation)
        if x.tags != IMAGE:  # a vector, a pooled image, or the patches' grid of tokens
            raise refuse(node, "a convolution of a value that is not an image")
        k = w.shape[-1]
        cut = _flattened_to_tokens(node)
        # a ViT's (k > 1, flatten(2)); else (a 1x1 convolution, channels-last first) only of
        # an image nothing else reads: one read twice stays a convolution and its tokens
        if stride == (k, k) and w.shape[-2] == k and padding in ((0, 0), "valid") \
                and dilation == (1, 1) and groups == 1 and x.name == "img" and pads is None \
                and cut and (k > 1 and cut == "flat" or len(node.args[0].users) == 1):
            if std is not None:  # the program's patches input reads a plain matrix
                raise self.refuse_standardised(node, std)
            return self._patch_embedding(node, x, w, b, k)
        pads = _conv_pads(padding, pads, w.shape[-2:], stride, dilation)
        half = tuple(d - 1 for d in w.shape[-2:])  # twice the same padding of an odd kernel
        same = pads == (half[0] // 2,) * 2 + (half[1] // 2,) * 2 and not half[0] % 2 + half[1] % 2
        if groups != 1 or not same or dilation != (1, 1) or stride not in ((1, 1), (2, 2)):
            return self._conv_geometry(node, x, w, b, stride, pads, dilation, groups)
        kernel, _ = self.param(w, node)
        bias = self.vector_param(b, node) if b is not None else None
        name = self.fresh(node.name if stride == (1, 1) else f"{node.name}_full")
        self.out.stmts.append(f"{name} = {kernel} @ {x.name}" + (f" + {bias}" if bias else ""))
        self.out.producers[name] = (kernel, bias)
        if stride == (1, 1):
            self.out.vectors[name] = (node.name, "out")
            return Vec(name, IMAGE, w.shape[0])
        # the stride-1 convolution has no value in the model: only its every other pixel
        return self._emit(node, f"subsample({name})", w.shape[0], IMAGE)

    def image_cat(self, node, tensors, dim) -> Joined | None:
        """Images concatenated along their channels (HGNet's stem and aggregations) where
        every reader is a convolution of them (ungrouped): held as their parts, which
        _joined_conv reads as the sum it equals; None for anything else."""
        if len(tensors) < 2 or not isinstance(dim, int) or dim % 4 != 1 or not node.users:
            return None
        if not all(isinstance(t, (Vec, Affine, Pointwise)) and tuple(self._tags(t, node) or ())
                   == IMAGE for t in tensors):
            return None
        for u in node.users:
            groups = u.args[6] if len(u.args) > 6 else u.kwargs.get("groups", 1)
            if op_name(u) != "conv2d" or u.args[0] is not node or node in u.args[1:] \
                    or groups != 1:
                return None
        return Joined([self.vec(t, node) for t in tensors], node.name, IMAGE)

    def _joined_conv(self, node, x: Joined, w, b, stride, padding, dilation) -> Vec:
        """``conv2d(cat(a, b), K) + bias = conv(K[:, :c], a) + conv(K[:, c:], b) + bias``: a
        convolution is a matmul over each window's in·kh·kw values, so the concatenation's
        channels split its kernel's input channels into column blocks, each a kernel param of
        its own (ParamUse.cols: apply inits each block at its own std; LRs that differ are
        carried by a scale of the input's channels, columns.py), each derived from the part
        it reads, as the blocks of a linear layer of a concatenated vector are (ops_concat.py)."""
        stride, padding, dilation = (_pair(a) for a in (stride, padding, dilation))
        if not isinstance(w, PRef) or w.rows or w.offset or w.shape[1] != sum(
                p.dim for p in x.parts) or stride[0] != stride[1] or dilation[0] != dilation[1]:
            raise refuse(node, "a convolution of images concatenated along their channels "
                         "whose kernel is not a whole param [out, in, kh, kw] of their channels, "
                         "or whose stride or dilation differs between the pixel axes",
                         help="convolve each part with its own nn.Conv2d and add the outputs")
        pads = _conv_pads(padding, None, w.shape[-2:], stride, dilation)
        geometry = ", ".join(str(i) for i in (stride[0], *pads, dilation[0]))
        span = user_span(self.by_name.get(x.node, node))
        terms, names, lo = [], [], 0
        for k, part in enumerate(x.parts):
            cols = Columns(k, lo, lo + part.dim, w.shape[1], span)
            name, _ = self.param(PRef(w.target, w.shape, cols=cols), node)
            names.append(name)
            terms.append(f"conv({name}, {part.name}, {geometry})")
            lo += part.dim
        bias = self.vector_param(b, node) if b is not None else None
        expr = " + ".join(terms) + (f" + {bias}" if bias else "")
        return Vec(self.emit_vector(node.name, expr, (names[0], bias)), IMAGE, w.shape[0])

    def _depthwise(self, node, x, w: PRef, b, stride, padding, dilation, groups: int) -> Vec:
        """``nn.Conv2d(c, c, k, padding=k // 2, groups=c)`` (kernel [c, 1, k, k]): each channel
        convolved with its own taps, the language's ``dwconv(D, h)`` with D the kernel [c, k,
        k] (its axis of 1 dropped); stride 2 is ``subsample`` of it, as for the full
        convolution. Any other geometry (a zero pad of the image before it folded in:
        MobileNet's TF 'SAME' pad) is ``dwconv(D, h, s, top, bottom, left, right, d)``, as the
        full convolution's is ``conv(...)``. Groups neither 1 nor the channels (each output
        channel reading a block of several input channels) are refused: the language has no
        such sum."""
        c_in = int(node.args[0].meta["val"].shape[1])
        x, pads = (x.vec, x.pads) if isinstance(x, Padded) else (self.vec(x, node), None)
        if not (groups == c_in == w.shape[0] and w.shape[1] == 1):
            # groups of several channels: conv(K, h, ..., g), its kernel [out, in / g, kh, kw]
            if x.tags != IMAGE:
                raise refuse(node, "a grouped convolution of a value that is not an image")
            stride, padding, dilation = (_pair(a) for a in (stride, padding, dilation))
            pads = _conv_pads(padding, pads, w.shape[-2:], stride, dilation)
            return self._conv_geometry(node, x, w, b, stride, pads, dilation, groups)
        if x.tags != IMAGE:
            raise refuse(node, "a depthwise convolution of a value that is not an image")
        stride, padding, dilation = (_pair(a) for a in (stride, padding, dilation))
        pads = _conv_pads(padding, pads, w.shape[-2:], stride, dilation)
        half = tuple(d - 1 for d in w.shape[-2:])  # twice the same padding of an odd kernel
        same = pads == (half[0] // 2,) * 2 + (half[1] // 2,) * 2 and not half[0] % 2 + half[1] % 2
        if stride[0] != stride[1] or dilation[0] != dilation[1]:
            raise refuse(
                node,
                f"a depthwise convolution with kernel {list(w.shape[-2:])}, stride "
                f"{_text(stride)}, padding {list(pads)}, dilation {_text(dilation)} (the "
                "language's has one stride and one dilation for both pixel axes)",
                help="use nn.Conv2d(c, c, (kh, kw), stride=s, padding=p, dilation=d, "
                "groups=c) with one s and one d",
            )
        kernel, _ = self.param(PRef(w.target, (w.shape[0], *w.shape[-2:])), node)
        bias = self.vector_param(b, node) if b is not None else None
        if not same or dilation != (1, 1) or stride not in ((1, 1), (2, 2)):
            return self._geometric(node, "dwconv", kernel, x, bias, w.shape[0], stride, pads,
                                   dilation)
        name = self.fresh(node.name if stride == (1, 1) else f"{node.name}_full")
        self.out.stmts.append(f"{name} = dwconv({kernel}, {x.name})"
                              + (f" + {bias}" if bias else ""))
        self.out.producers[name] = (kernel, bias)  # linear in both: a multiplier folds in
        if stride == (1, 1):
            self.out.vectors[name] = (node.name, "out")
            return Vec(name, IMAGE, w.shape[0])
        return self._emit(node, f"subsample({name})", w.shape[0], IMAGE)

    def _conv_geometry(self, node, x: Vec, w: PRef, b, stride, pads, dilation, groups) -> Vec:
        """A convolution of another geometry than ``K @ h``'s (or its every other pixel):
        ``conv(K, h, s, top, bottom, left, right, d)``, with its padding and any zero pad of the
        image before it (``_zero_pad``). The language's stride and dilation are the same along
        both pixel axes; a grouped one (``conv(..., g)``) has the same groups at both widths
        (a fixed group width, whose groups grow with the width, is refused where they meet)."""
        if stride[0] != stride[1] or dilation[0] != dilation[1]:
            raise refuse(
                node,
                f"a convolution with kernel {list(w.shape[-2:])}, stride {_text(stride)}, "
                f"padding {list(pads)}, dilation {_text(dilation)}, groups {groups} (the "
                "language's convolution has one stride and one dilation for both pixel axes)",
                help="use nn.Conv2d(c_in, c_out, (kh, kw), stride=s, padding=p, dilation=d) "
                "with one s and one d",
            )
        kernel, _ = self.param(w, node)
        bias = self.vector_param(b, node) if b is not None else None
        return self._geometric(node, "conv", kernel, x, bias, w.shape[0], stride, pads, dilation,
                               groups)

    def _geometric(self, node, fn: str, kernel: str, x: Vec, bias, dim: int, stride, pads,
                   dilation, groups: int = 1) -> Vec:
        """``fn(K, h, s, top, bottom, left, right, d[, g]) (+ b)``: a convolution (``conv``,
        in g groups) or a depthwise one (``dwconv``) written with its geometry, a vector of the
        model."""
        more = (groups,) if groups != 1 else ()
        geometry = ", ".join(str(i) for i in (stride[0], *pads, dilation[0], *more))
        name = self.fresh(node.name)
        self.out.stmts.append(f"{name} = {fn}({kernel}, {x.name}, {geometry})"
                              + (f" + {bias}" if bias else ""))
        self.out.producers[name] = (kernel, bias)
        self.out.vectors[name] = (node.name, "out")
        return Vec(name, IMAGE, dim)

    def _pooled_conv(self, node, x: Vec, w: PRef, b, stride, padding, dilation) -> Vec:
        """A 1x1 convolution of a globally pooled image [B, C, 1, 1] (a squeeze-and-excitation
        layer's): a linear layer of the pooled vector, ``W @ x`` with W the kernel [out, in]
        (the kernel's two axes of size 1 dropped), still one vector per image."""
        if tuple(w.shape[-2:]) != (1, 1) or stride != (1, 1) or padding not in ((0, 0), "valid",
                                                                              "same"):
            raise refuse(node, f"a convolution with kernel {list(w.shape[-2:])}, stride "
                         f"{_text(stride)}, padding {_text(padding)} of a pooled image (one "
                         "pixel: only a 1x1 kernel, unpadded, is a linear layer of it)",
                         help="use nn.Conv2d(c_in, c_out, 1) after the pool, or nn.Linear")
        kernel, _ = self.param(PRef(w.target, (w.shape[0], w.shape[1])), node)
        bias = self.vector_param(b, node) if b is not None else None
        name = self._emit(node, f"{kernel} @ {x.name}" + (f" + {bias}" if bias else ""),
                          w.shape[0], POOLED)
        self.out.producers[name.name] = (kernel, bias)
        return name

    def image_read_once(self) -> None:
        """After the walk: an image cut into patches is the program's ``patches`` input, so no
        statement may read the image itself (a second branch on its pixels)."""
        cut = getattr(self, "cut", None)
        if cut is not None and _reads_image(self.out.stmts):
            raise refuse(cut, "an image cut into patches here and also read otherwise (the "
                         "program has either the image or its patches)",
                         help="read the image only through the patch embedding")

    def _patch_embedding(self, node, x: Vec, w: PRef, b, k: int) -> Vec:
        """A convolution whose stride equals its kernel (a ViT's patch embedding): the same
        matmul applied to each k x k patch, ``E @ patch + b`` with E [n, C·k·k] (the kernel
        flattened: a finite fan-in), one vector per patch in the grid of patches."""
        patch = self.patches(node, x, k)
        ref = PRef(w.target, (w.shape[0], patch.dim))
        kernel, _ = self.param(ref, node)
        bias = self.vector_param(b, node) if b is not None else None
        name = self._emit(node, f"{kernel} @ {patch.name}" + (f" + {bias}" if bias else ""),
                          w.shape[0], GRID)
        self.out.producers[name.name] = (kernel, bias)
        return name

    def op_im2col(self, node, x, kernel, dilation, padding, stride):
        """``F.unfold(img, k, stride=k)``: the image cut into k x k patches, [B, C·k·k, T]."""
        x = self.vec(x, node)
        k = _pair(kernel)
        if k[0] != k[1] or _pair(stride) != k or _pair(padding) != (0, 0) \
                or _pair(dilation) != (1, 1):
            raise refuse(node, f"an unfold of kernel {_text(k)}, stride {_text(_pair(stride))}, "
                         f"padding {_text(_pair(padding))} (the language cuts an image into "
                         "non-overlapping patches only: stride equal to the kernel, no padding)",
                         help="unfold with stride equal to the kernel size and no padding")
        patch = self.patches(node, x, k[0])
        return Vec(patch.name, ("tok", "F", "tok"), patch.dim)

    def position_table(self, node, ref: PRef) -> Vec:
        """A learned table of positions added to every sequence (a ViT's ``pos_embed``, a param
        [1, T, n]): row t added to token t is a lookup of position t, ``P @ pos`` (as an
        embedding of the positions 0..T-1 is), with P [n, T]: a finite fan-in T, one-hot."""
        seq = getattr(self, "tokens_seq", None)
        out = tuple(node.meta["val"].shape)  # (a table of one row is broadcast to every token)
        other = [self.env.get(getattr(a, "name", None)) for a in node.args[:2]]  # no [B, C, T]
        if ref.shape[0] != 1 or ref.t or ref.rows or len(out) != 3 or out[1] != ref.shape[1] \
                or any(tuple(self._tags(v, node)) != ("tok",) * 2 + ("F",) for v in other
                       if v is not ref):
            raise refuse(
                node,
                f"a param of shape {list(ref.shape)} added to per-token vectors (a table of "
                f"positions is [1, T, n], T the tokens of the input{f' ({seq})' if seq else ''}"
                ", or of a sequence made longer by learned tokens put before them, or an "
                "image's pixels read as tokens)",
                help="add a position table of one row per token of the sequence",
            )
        # the input's T, or a sequence made longer by learned tokens (a class token's T1)
        over = self.sequences().get(ref.shape[1])
        if over is None:
            # the pixels of an image read as tokens (a convolution's output flattened, Hiera's
            # overlapping patches: tokens(h, D)), or another sequence of the walk's: which one
            # is read off the sum's statement after the walk (sequences.py), as for a
            # lookup's positions (ops_linear.py); torch's broadcast made the lengths agree
            pos = over = self.sequence_input("_pos", "positions", ref.shape[1], 0)
        else:  # the positions of the longer sequence (trace.py declares T's); those of a
            # later stage's own sequence (PVT's S17, ops_encoder.prepend_tokens) an input
            pos = "pos" if over.startswith("T") else f"pos_{over}"
            if over != "T" and f"input {pos} : positions[{over}]" not in self.out.decls:
                self.out.decls.append(f"input {pos} : positions[{over}]")
        table, _ = self.param(PRef(ref.target, ref.shape[1:]), node, lookup=True, fan_in=over)
        self.positions = ref.shape[1]
        name = self.fresh(f"{table}_rows")  # no node of the graph holds it: not probed
        self.out.stmts.append(f"{name} = {table} @ {pos}")
        self.out.producers[name] = (table, None)
        return Vec(name, ("tok", "tok", "F"), ref.shape[2])

    def _emit(self, node, expr: str, dim: int, tags) -> Vec:
        name = self.emit_vector(node.name, expr)
        return Vec(name, tags, dim)

    # -- batch norm ----------------------------------------------------------------------------
    def op_batch_norm(self, node, x, w, b, mean, var, training, momentum, eps, *rest):
        """``batchnorm(x)``, times the gain, plus the bias: each channel normalised over the
        batch and the pixels, as the module computes it in training mode (the graph is exported
        with its batch norms in training mode, ``train_norms``). A batch norm the build left in
        eval mode (frozen statistics) is refused before the walk (``refuse_frozen_norms``)."""
        return self._image_norm(node, "batchnorm", self.vec(x, node), w, b)

    def _image_norm(self, node, fn: str, x: Vec, w, b, group: str = "") -> Vec:
        """``g * fn(x) + b`` (``fn(x, group)``), the gain and bias optional params of the
        channels."""
        if isinstance(w, PRef) + isinstance(b, PRef) != (w is not None) + (b is not None):
            raise refuse(node, f"a {fn[:-4]} norm whose gain or bias is not a param")
        expr = f"{fn}({x.name}{group})"
        if w is not None:
            expr = f"{self.vector_param(w, node)} * {expr}"
        if b is not None:
            expr += f" + {self.vector_param(b, node)}"
        return self._emit(node, expr, x.dim, x.tags)

    def op_group_norm(self, node, x, groups, w=None, b=None, *rest):
        """``groupnorm(x)``, times the gain, plus the bias: each image normalised over all its
        channels and pixels together (``nn.GroupNorm(1, c)``, PoolFormer's); of g groups,
        ``groupnorm(x, d)``: each group of d = c / g consecutive channels normalised with its
        pixels apart (BiT's GroupNorm(32, c)), d a dim of the two widths' sizes (a fixed count
        of groups: d ∝ n; a fixed group size: d finite)."""
        x = self.vec(x, node)
        if x.tags != IMAGE:
            raise refuse(node, "a group norm of a value that is not an image [B, C, H, W]",
                         help="normalise a vector with nn.LayerNorm")
        group = f", {self.dim(x.dim // groups)}" if groups != 1 else ""
        return self._image_norm(node, "groupnorm", x, w, b, group)

    def refuse_image_broadcast(self, node, u, v, product: bool) -> None:
        """Refuses a sum or product of two image-valued values that torch broadcasts where the
        language does not (ops_arith.py asks before it writes ``u + v`` or ``u * v``): it
        combines images channel by channel, and scales an image's pixels by a pooled vector
        (no pixels) only in a product (a squeeze-and-excitation gate). Left to the program,
        such a line would fail to parse in the traced program, not at the user's line."""
        if not (is_image(u) and is_image(v)):
            return  # a param (a bias, a layer scale) broadcasts as the language's params do
        found = []  # each operand's channels and pixels, where its tags say (an image may be
        # laid out channels-last)
        for a, x in zip(node.args[:2], (u, v), strict=True):
            shape = tuple(getattr(getattr(a, "meta", {}).get("val"), "shape", ()))
            tags = getattr(x, "tags", None) or x.src.tags
            if len(shape) != 4 or len(tags) != 4 or "F" not in tags:
                return
            found.append((shape[tags.index("F")],
                          [d for d, t in zip(shape[1:], tags[1:], strict=True) if t != "F"]))
        (c1, p1), (c2, p2) = found
        what = "product" if product else "sum"
        if c1 != c2:
            raise refuse(node, f"a {what} of an image-valued value of {c1} channels with one of "
                         f"{c2} (the language combines images channel by channel: a gate of "
                         "one channel for every channel has no form)",
                         help="gate with as many channels as the image (e.g. nn.Conv2d(c, c, "
                         "1) after the pool), or write the model as a program")
        if p1 != p2 and not product:
            raise refuse(node, f"a sum of an image of {p1[0]}x{p1[1]} pixels and one of "
                         f"{p2[0]}x{p2[1]} (the language adds images of one size; a pooled "
                         "vector scales an image's pixels only in a product, a gate)",
                         help="multiply the image by the pooled gate (h * torch.sigmoid(g)), "
                         "or pool both")

    # -- pooling -------------------------------------------------------------------------------
    def op_pad(self, node, x, pad, mode="constant", value=None):
        """A pad by nothing, the value as it is: Swin's maybe_pad pads its grid to whole
        windows, by 0 where the windows tile it (its configs'). An image padded by zeros for
        the convolutions that read it: their padding (``_zero_pad``). Any other pad is
        refused."""
        if any(int(p) != 0 for p in pad):
            return self._zero_pad(node, x, pad, mode, value)
        return x

    def _zero_pad(self, node, x, pad, mode, value) -> Padded:
        """``F.pad(img, (left, right, top, bottom))`` by zeros (TF's 'SAME' padding before a
        convolution: MobileNet's ``apply_tf_padding``), read only as the input of convolutions:
        a convolution of the padded image is the convolution padded so, exactly, which is how
        each reads it (``conv(K, h, s, top, bottom, left, right, d)``). A pad read otherwise has
        no value in the program: refused."""
        x = self.vec(x, node)
        readers = [u for u in node.users if (op_name(u) != "conv2d" or u.args[0] is not node)
                   and not padded_pool(u, tuple(int(p) for p in pad))]
        if x.tags != IMAGE or len(pad) != 4 or mode != "constant" or value not in (None, 0) \
                or any(int(p) < 0 for p in pad) or readers or not node.users:
            raise refuse(
                node,
                f"a pad by {[int(p) for p in pad]} ({mode}, value {value}) of a value that is "
                "not an image, or read by another op than a convolution (an image's pad by "
                "zeros is traced as the padding of the convolutions that read it)",
                help="pad an image by zeros right before a convolution (or give the "
                "convolution its padding)",
            )
        left, right, top, bottom = (int(p) for p in pad)
        return Padded(x, (top, bottom, left, right))

    def op_max_pool2d(self, node, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
        if isinstance(x, Padded) and padded_pool(node, x.pads):  # (ops_zeropool.py)
            return zero_padded_max(self, node, x.vec, x.pads)
        return self._pool(node, x, "maxpool", kernel, stride, padding, dilation, ceil_mode)

    def op_avg_pool2d(self, node, x, kernel, stride=(), padding=0, ceil_mode=False,
                      count_include_pad=True, divisor_override=None):
        if _pair(kernel) == (1, 1) and _pair(stride) == (2, 2) and _pair(padding) == (0, 0) \
                and self.vec(x, node).tags == IMAGE:
            x = self.vec(x, node)
            return self._emit(node, f"subsample({x.name})", x.dim, IMAGE)
        grid = tuple(node.args[0].meta["val"].shape[-2:])
        if tuple(node.meta["val"].shape[-2:]) == (1, 1) and _pair(padding) == (0, 0) \
                and divisor_override is None and all(
                    k >= g for k, g in zip(_pair(kernel), grid, strict=True)):
            # one window over the whole image (EfficientNet's AvgPool2d(hidden_dim,
            # ceil_mode=True) on a smaller grid): with no padding its divisor is the pixels
            # inside it, all of them, so it is their mean
            return self.op_adaptive_avg_pool2d(node, x, 1)
        # a 3x3 mean counts only the pixels inside the image when count_include_pad is False
        # (avgpool3); counting the zeros too is another function at the border: refused below
        return self._pool(node, x, "avgpool", kernel, stride, padding, 1,
                          ceil_mode or divisor_override is not None, not count_include_pad)

    def _pool(self, node, x, fn, kernel, stride, padding, dilation, odd, own_pixels=True):
        x = self.vec(x, node)
        stride = _pair(stride) if stride else _pair(kernel)
        if _pair(kernel) == (3, 3) and _pair(padding) == (1, 1) and own_pixels \
                and stride in ((1, 1), (2, 2)) and _pair(dilation) == (1, 1) and not odd \
                and x.tags == IMAGE:
            # a same-padded 3x3 max (torch pads with -inf) or mean of the pixels inside; at
            # stride 2 (torchvision's stem pool) its every other pixel, exactly
            if stride == (1, 1):
                return self._emit(node, f"{fn}3({x.name})", x.dim, IMAGE)
            full = self.fresh(f"{node.name}_full")  # no value in the model: not probed
            self.out.stmts.append(f"{full} = {fn}3({x.name})")
            return self._emit(node, f"subsample({full})", x.dim, IMAGE)
        if _pair(kernel) != (2, 2) or stride != (2, 2) or _pair(padding) != (0, 0) \
                or _pair(dilation) != (1, 1) or odd:
            raise refuse(
                node,
                f"a {fn[:3]} pool of kernel {_text(_pair(kernel))}, stride {_text(stride)}, "
                f"padding {_text(_pair(padding))} (the language pools 2x2 blocks, stride 2)",
                help=f"use nn.{fn[:3].capitalize()}Pool2d(2)" + (
                    ", or nn.MaxPool2d(3, stride=1 or 2, padding=1)" if fn == "maxpool" else
                    ", or nn.AvgPool2d(3, stride=1 or 2, padding=1, count_include_pad=False)"),
            )
        if x.tags != IMAGE:
            raise refuse(node, f"a {fn[:3]} pool of a value that is not an image")
        return self._emit(node, f"{fn}({x.name})", x.dim, IMAGE)

    def op_adaptive_avg_pool2d(self, node, x, size):
        x = self.vec(x, node)
        if _pair(size) != (1, 1) or x.tags != IMAGE:
            raise refuse(node, f"an adaptive average pool to {_text(_pair(size))} (the language "
                         "pools an image to one pixel: global_pool)",
                         help="use nn.AdaptiveAvgPool2d(1), or x.mean((2, 3))")
        return self._emit(node, f"global_pool({x.name})", x.dim, POOLED)

    def image_mean(self, node, x, dims, keepdim=False):
        """``x.mean((2, 3))`` of an image: global_pool; any other mean of one is refused."""
        axes = sorted(d % 4 for d in (dims if isinstance(dims, (list, tuple)) else [dims]))
        if isinstance(x, RowMean):  # the other half of a global pool, over rows then columns
            if len(axes) != 1 or axes[0] == x.axis or not keepdim:
                raise refuse(node, f"a mean of an image over axes {sorted({x.axis, *axes})} "
                             "after one over its pixel axis alone", help="average over the "
                             "pixels, x.mean((2, 3))")
            return self._emit(node, f"global_pool({x.src.name})", x.src.dim, POOLED)
        x = self.vec(x, node)
        if len(axes) == 1 and axes[0] in (2, 3) and keepdim and x.tags == IMAGE and _then_mean(
                node, 5 - axes[0]):
            return RowMean(x, axes[0])
        if axes != [2, 3] or x.tags != IMAGE:
            raise refuse(node, f"a mean of an image over axes {axes} (only the pixels, axes 2 "
                         "and 3, pool: global_pool)",
                         help="average over the pixels, x.mean((2, 3))")
        return self._emit(node, f"global_pool({x.name})", x.dim,
                          POOLED if keepdim else ("tok", "F"))

    def image_view(self, node, v):
        """A view of an image-valued value: a pooled image's two axes of size 1 dropped
        (``flatten(x, 1)``, ``x.view(B, -1)``), or its pixels flattened into tokens
        (``tokens(h, T)``, ops_pixels.py); any other is refused."""
        shape = tuple(node.meta["val"].shape)
        v = self.vec(v, node)
        old = tuple(node.args[0].meta["val"].shape)
        if v.tags in (POOLED, ("tok", "F", "one")) and len(shape) == 2 and shape == old[:2]:
            return Vec(v.name, ("tok", "F"), v.dim)  # (or a token mean's, ops_pool.py)
        if v.tags == GRID and shape == (*old[:2], old[2] * old[3]):  # flatten(2): the patches
            return Vec(v.name, ("tok", "F", "tok"), v.dim)  # in order, one token each
        if v.tags == ("tok", "grid", "grid", "F") and shape == (old[0], old[1] * old[2], old[3]):
            return Vec(v.name, ("tok", "tok", "F"), v.dim)  # the same, channels-last first
        tokens = self.pixels_to_tokens(node, v)  # its pixels read as tokens (ops_pixels.py)
        if tokens is not None:
            return tokens
        if shape[0] != old[0]:
            raise refuse(node, f"a view of an image from {list(old)} to {list(shape)} (its "
                         f"pixels folded into the batch{_strided_groups(old, shape)})",
                         help="read the image's pixels as tokens, x.flatten(2).transpose(1, "
                         "2), and attend over all of them (a model other than MobileViT's, "
                         "whose strided groups the language would say with a mask-only "
                         "input of them beside `windows[T, B, H, W, s]`, docs/language.md)")
        raise refuse(node, f"a view of an image from {list(old)} to {list(shape)} (an image "
                     "is flattened only after a global pool, or its pixels into tokens: "
                     "[B, C, H, W] to [B, C, H·W], [B, H, W, C] to [B, H·W, C])",
                     help="pool to one pixel first (nn.AdaptiveAvgPool2d(1)), then flatten; "
                     "or flatten the pixels into tokens, x.flatten(2).transpose(1, 2)")


def refuse_frozen_norms(model) -> None:
    """A batch norm in eval mode at build (its running statistics frozen while the model
    trains) is an affine map per channel, not the normalisation the trace writes: refused."""
    import torch

    for name, m in model.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not m.training \
                and m.track_running_stats:
            raise TraceError(
                f"cannot trace {strip_prefix(name) or 'the model'}: a {type(m).__name__} in "
                "eval mode (running statistics frozen); the trace writes a batch norm as it "
                "trains, normalising each channel over the batch",
                help="build the model in training mode (do not call .eval() in build); a "
                "frozen batch norm is an affine map the trace does not read",
            )


def train_norms(model) -> None:
    """Batch norms back in training mode after ``model.eval()`` (which the trace and the check
    use to turn dropout off): the program is their training forward, each channel normalised
    over the batch, so the graph must compute that, not the affine map of eval mode."""
    import torch

    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.train()


@dataclass(frozen=True)
class Padded:
    """An image padded by zeros (top, bottom, left, right), which only convolutions read."""

    vec: Vec
    pads: tuple[int, int, int, int]


def _conv_pads(padding, pads, kernel, stride, dilation) -> tuple[int, int, int, int]:
    """A convolution's padding per side (top, bottom, left, right): its own (torch's 'same'
    puts the odd one at the bottom and right), plus a zero pad of the image before it."""
    if padding == "valid":
        padding = (0, 0, 0, 0)
    elif padding == "same":  # torch: stride 1 only; total d(k-1), the smaller half first
        total = [d * (k - 1) for d, k in zip(dilation, kernel, strict=True)]
        padding = (total[0] // 2, total[0] - total[0] // 2, total[1] // 2,
                   total[1] - total[1] // 2)
    else:
        padding = (padding[0], padding[0], padding[1], padding[1])
    return tuple(int(p) + q for p, q in zip(padding, pads or (0, 0, 0, 0), strict=True))


def _flattened_to_tokens(node) -> str | None:
    """Whether a convolution's output is only flattened into tokens (a ViT's ``proj(img)
    .flatten(2)``, [B, C, H·W]; or laid out channels-last first, ``.permute(0, 2, 3, 1)``
    then [B, H·W, C]: Perceiver's 1x1 convolution of each pixel, a patch of one): then it cut
    the image into patch tokens, the program's ``patches`` input. The same stride-k k x k
    convolution read as an image (ConvNeXt's stem, which a norm, convolutions and pools read)
    is a convolution of that geometry, giving an image; the two are the same matmul of each
    patch, but only the graph's readers say which the program's later ops take (tokens or
    pixels)."""
    if len(node.meta["val"].shape) != 4:  # a conv1d's of tokens read as a 1 x T image
        return None  # (ops_tokenimage.py): its output is [B, C, T], no image to cut
    b, c, h, w = node.meta["val"].shape

    def flat(u, shape) -> bool:
        return op_name(u) in ("view", "reshape", "_unsafe_view", "flatten") and tuple(
            u.meta["val"].shape) == shape

    def last(u) -> bool:  # channels-last, then flattened
        return op_name(u) == "permute" and tuple(d % 4 for d in u.args[1]) == (0, 2, 3, 1) \
            and bool(u.users) and all(flat(v, (b, h * w, c)) for v in u.users)

    if node.users and all(flat(u, (b, c, h * w)) for u in node.users):
        return "flat"
    return "last" if node.users and all(last(u) for u in node.users) else None


def _reads_image(stmts) -> bool:
    """Whether a statement reads the image input ``img``."""
    return any(re.search(r"\bimg\b", s.partition("=")[2]) for s in stmts)


def _pair(a):
    if isinstance(a, str):
        return a
    a = tuple(a) if isinstance(a, (list, tuple)) else (a,)
    return a * 2 if len(a) == 1 else a


def _text(a) -> str:
    return a if isinstance(a, str) else "x".join(str(i) for i in a)


def _strided_groups(old, new) -> str:
    """MobileViT's ``unfolding``'s first view, [B, C, H, W] to [B·C·nh, ph, nw, pw], in words."""
    b, c, h, w = old
    if len(new) != 4 or new[0] % (b * c) or not new[1] * new[0] // (b * c) == h or \
            new[2] * new[3] != w or new[1] < 2 or new[3] < 2 or new[1] == h or new[3] == w:
        return ""
    nh, ph, nw, pw = new[0] // (b * c), new[1], new[2], new[3]
    return (f": MobileViT's unfolding into {nh * nw} patches of {ph}x{pw} pixels, whose transformer"
            f" attends over the {nh * nw} patches once for each of the {ph * pw} pixel offsets: "
            f"attention over the {h * w} pixels as tokens in which a pixel attends only the pixels"
            " at its offset in their patch, strided groups under a constant mask. The language's "
            "windows group a grid's tokens into contiguous w x w windows with a learned bias "
            "(Swin's), not strided groups with none")
