"""One exported graph converted to one width's statements: the walker with its op table.

Each aten op family is one mixin (layout, linear, arithmetic, norms and attention); the walker
dispatches a node to ``op_<name>``. An op with no method is refused at the user's line.
"""

from __future__ import annotations

from .ops_arith import ArithOps
from .ops_attention import AttentionOps
from .ops_axial import AxialOps
from .ops_batchmask import BatchMaskOps
from .ops_bias import FixedBiasOps
from .ops_blocks import BlockOps
from .ops_classtoken import ClassTokenOps
from .ops_codebooks import CodebookOps
from .ops_complex import ComplexOps
from .ops_concat import ConcatOps
from .ops_conv import ConvOps
from .ops_conv1d import Conv1dOps
from .ops_delayed import DelayedOps
from .ops_delta import DeltaRuleOps
from .ops_depthres import DepthOps
from .ops_encoder import EncoderOps
from .ops_entries import EntryOps
from .ops_fixedgain import FixedGainOps
from .ops_flatstreams import FlatStreamOps
from .ops_gate import HeadGateOps
from .ops_global import GlobalOps
from .ops_grid import GridOps
from .ops_grn import GrnOps
from .ops_headcat import HeadCatOps
from .ops_headdot import HeadDotOps
from .ops_heads import FusedHeadOps
from .ops_layout import LayoutOps
from .ops_lightning import LightningOps
from .ops_linear import LinearOps
from .ops_mapped import MappedRowsOps
from .ops_maskunit import MaskUnitOps
from .ops_merged import MergedOps
from .ops_mla import LatentAttentionOps
from .ops_moe import MoEOps
from .ops_nograd import NoGradOps
from .ops_norm import NormOps
from .ops_offsets import OffsetOps
from .ops_paramfn import ParamFnOps
from .ops_pixels import PixelTokenOps
from .ops_place import PlaceOps
from .ops_pointwise import PointwiseOps
from .ops_pool import PoolOps
from .ops_relative import RelativeOps
from .ops_rescale import RescaleOps
from .ops_rotary import RotaryOps
from .ops_scaledparam import ScaledParamOps
from .ops_select import SelectOps
from .ops_shift import ShiftOps
from .ops_sink import SinkOps
from .ops_spread import SpreadParamOps
from .ops_ssd import SSDScanOps
from .ops_standardise import RowStatOps, StandardiseOps
from .ops_streams import StreamOps
from .ops_switch import SwitchOps
from .ops_tables import TableOps
from .ops_tconv import TokenConvOps
from .ops_temperature import TemperatureOps
from .ops_timemajor import TimeMajorOps
from .ops_tokenimage import TokenImageOps
from .ops_vmap import VmapOps
from .ops_windows import WindowOps
from .ops_wkv import WkvOps
from .sequences import resolve
from .values import Trace
from .walk import Walker


class Converter(
    BlockOps,  # a sequence cut into blocks (LongT5's local attention): every op on its values
    VmapOps,  # enters and leaves a vmap's levels, which nothing reads, as the graph does
    DepthOps,  # a stack of block outputs read by attention over depth, before the streams'
    StreamOps,  # a stack of residual streams (hyper-connections) takes every op on it first
    MappedRowsOps,  # a coordinatewise map of a layer's output, held till each head is split
    SwitchOps,  # a where of a switch (x > 0) as its pieces, before any op's rule reads them
    TimeMajorOps,  # checks every op on a value laid out (tokens, batch, ...) before the others
    OffsetOps,  # checks every op on values over a window's offsets (Swin V2's bias MLP)
    MaskUnitOps,  # Hiera's fused qkv per unit, attention and max pooling of unrolled tokens
    WindowOps,  # values cut into Swin's windows: relayouts, per-token ops, attention
    TemperatureOps,  # a function of a param kept as Swin V2's temperature, till it is used
    ParamFnOps,  # a function of a param alone, kept op by op till it is used as a gain
    NoGradOps,  # a no_grad region of top-k ids over a whole axis, before the walker refuses it
    MergedOps,  # its sdpa takes two sequences' keys side by side before AttentionOps'
    SinkOps,  # its op_cat, op_max, op_softmax, ... take a sink's pieces before the others'
    HeadCatOps,  # a split along the heads of attention outputs side by side in each head
    LatentAttentionOps,  # its op_slice takes a new_empty's parts before LayoutOps'
    GrnOps,  # its op_mean, op_add, op_div and op_mul take a GRN's pieces before ArithOps'
    ClassTokenOps,  # its op_split*, op_layer_norm, op_mean take a split-off class token's
    # its call carries the examples a mask keeping none selects past every op, and its
    # op_index takes a mask over the batch before LinearOps' lookups
    BatchMaskOps,
    ShiftOps,  # its op_pad takes a move of a sequence's tokens before ConvOps' pads of images
    DelayedOps,  # its op_linear and op_cat take a layer's output at zeros before the others'
    TokenImageOps,  # its op_pad and op_conv1d take tokens padded for conv1d's before ConvOps'
    SSDScanOps,  # the Mamba-2 scan's mixing (ssd_kernel.py's op)
    WkvOps,  # RWKV's time mixing (wkv_kernel.py's op)
    LightningOps,  # scores times a fixed decay per head (refused: ops_lightning.py)
    FixedGainOps,  # its _split and op_transpose take a gained layer's output before LayoutOps'
    DeltaRuleOps,  # its op_tensor_split takes a split keeping every token before TokenConvOps'
    # its op_unsqueeze and op_slice take a depthwise conv1d's weight and tokens before the others'
    TokenConvOps,
    FlatStreamOps,  # streams side by side in the features: its op_repeat before PoolOps'
    MoEOps, CodebookOps, SelectOps, RelativeOps, Walker, LayoutOps, LinearOps, ArithOps,
    AttentionOps,
    RotaryOps, ComplexOps, TableOps,
    PointwiseOps, NormOps, ConvOps, EncoderOps, FusedHeadOps, FixedBiasOps, PoolOps, ConcatOps,
    SpreadParamOps, ScaledParamOps, HeadGateOps, HeadDotOps, GlobalOps, PixelTokenOps, GridOps,
    AxialOps, EntryOps,
    Conv1dOps, PlaceOps, StandardiseOps, RowStatOps, RescaleOps,
):
    """The abstract interpreter of one graph (see values.py for what its values are; MoEOps
    comes first: it takes the ops on a router's selection before the walker's dispatch, and
    RelativeOps those on a relative position bias)."""


def convert(ep, base: dict, tok_value, scalars: dict | None = None,
            given: dict | None = None, keep: frozenset = frozenset(),
            own_heads: frozenset = frozenset(), traced: bool = True) -> Trace:
    """The statements of exported program ``ep``; ``base``: each param's init at the base width,
    ``tok_value``: the example's token ids on the CPU (the walk computes constants such as
    masks from zeros in their place, and from probe ids, so that nothing reads as a constant
    that varies with the ids; the placeholders' positions of an image put among the tokens are
    read from the example's own: ops_place.py),
    ``scalars``: the values of one-entry buffers (a graph exported on the meta device has none),
    ``given``: the other integer inputs (an attention mask, token-type ids), keyed by their
    placeholders: (the forward's name for it, its value on the CPU); ``keep``: the nodes whose
    number is a slot even where it is 1 (another width's is not 1); ``own_heads``: the
    attention nodes whose values have a head dim of their own at another width; ``traced``:
    whether ``tok_value`` are the ids the model is traced on (the coordinate check's probe
    replays the graph on its own batch, whose padding or edited ids the trace has judged)."""
    conv = Converter(ep, base)
    conv.keep_coefficients = frozenset(keep)
    conv.own_heads = own_heads
    conv.tok_value = None if tok_value is None else tok_value.new_zeros(tok_value.shape)
    conv.example_ids = tok_value
    conv.traced_ids = traced
    conv.scalars = scalars or {}
    conv.given = given or {}
    trace = conv.run()
    conv.image_read_once()  # an image cut into patches is read no other way (ops_conv.py)
    # the sequence of each positions, buckets and second token input (sequences.py)
    resolve(trace, conv.fresh, conv.tokens_seq)
    trace.tokens = (conv.tokens_seq, conv.tokens_vocab)
    return trace


def agreed_forms(traces: list[Trace], converted: list[tuple]) -> tuple[frozenset, frozenset]:
    """The forms one width writes where the other's numbers would let it write less, each
    trace converted again (from ``converted``, its arguments) with both widths' where it lacks
    one: a coefficient slot of a number that is 1 at that width only (MiniCPM's logits over
    hidden_size / 256, traced at 256), and the attention nodes whose values have a head dim of
    their own (``mix(p, v, dv)``), where dv meets the queries' head dim at that width. Both
    compute the same there, and the program is written as at the other width. The check's
    graph (check.py) is converted with them too, so a trace that wrote a node's number 1
    without its slot and a slot for it elsewhere (a switch's pieces at relu(x) and min(x, 0),
    named after x, where x is a fixed gain's block: ops_switch.py) is converted again as the
    check's is. Returns (coefficient nodes, own heads)."""
    keep = frozenset(traces[0].coefficient_nodes | traces[1].coefficient_nodes)
    own = frozenset(traces[0].own_heads | traces[1].own_heads)
    for i, again in enumerate(converted):
        if traces[i].coefficient_nodes != keep or traces[i].own_heads != own or \
                traces[i].bare_nodes & keep:
            traces[i] = convert(*again, keep=keep, own_heads=own)
    return keep, own
