"""The emitted module's names: Python identifiers drawn for program names so that none clashes
with a keyword, a builtin, the module's own globals or what torch.nn.Module defines.
"""

from __future__ import annotations

import keyword
import re

from .templates import HELPERS

# Every attribute a torch.nn.Module has (its methods, and what its __init__ sets): a param of
# that name would replace or be refused by the module's own machinery. Pinned here, not read
# from torch at emit time, so that the emitted text does not depend on the torch version; a test
# checks that it covers the installed torch.
NN_MODULE_ATTRS = frozenset({
    "T_destination", "_apply", "_backward_hooks", "_backward_pre_hooks", "_buffers",
    "_call_impl", "_compiled_call_impl", "_forward_hooks", "_forward_hooks_always_called",
    "_forward_hooks_with_kwargs", "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs",
    "_get_backward_hooks", "_get_backward_pre_hooks", "_get_name", "_is_full_backward_hook",
    "_load_from_state_dict", "_load_state_dict_post_hooks", "_load_state_dict_pre_hooks",
    "_maybe_warn_non_full_backward_hook", "_modules", "_named_members",
    "_non_persistent_buffers_set", "_parameters", "_register_load_state_dict_pre_hook",
    "_register_state_dict_hook", "_replicate_for_data_parallel", "_save_to_state_dict",
    "_slow_forward", "_state_dict_hooks", "_state_dict_pre_hooks", "_version",
    "_wrapped_call_impl", "add_module", "apply", "bfloat16", "buffers", "call_super_init",
    "children", "compile", "cpu", "cuda", "double", "dump_patches", "eval", "extra_repr",
    "float", "forward", "get_buffer", "get_extra_state", "get_parameter", "get_submodule",
    "half", "ipu", "load_state_dict", "modules", "mtia", "named_buffers", "named_children",
    "named_modules", "named_parameters", "parameters", "register_backward_hook",
    "register_buffer", "register_forward_hook", "register_forward_pre_hook",
    "register_full_backward_hook", "register_full_backward_pre_hook",
    "register_load_state_dict_post_hook", "register_load_state_dict_pre_hook",
    "register_module", "register_parameter", "register_state_dict_post_hook",
    "register_state_dict_pre_hook", "requires_grad_", "set_extra_state", "set_submodule",
    "share_memory", "state_dict", "to", "to_empty", "train", "training", "type", "xpu",
    "zero_grad",
    # transformers sets it on nn.Module itself when it initialises a model: a param of that
    # name would be shadowed in a process that has built one
    "smart_apply",
})
# what the emitted Model defines on itself besides the program's params
MODEL_ATTRS = {"width", "base_width", "reset_parameters", "vectors", "example_inputs", "depth",
               "base_depth", "_tensors", "_base_std", "seq_len", "from_config"}
# the emitted module's own globals, and its helpers by name
MODULE_GLOBALS = {"math", "operator", "torch", "BASE_WIDTH", "BASE_DEPTH", "SCALING", "SCALES",
                  "WIDTH_RULES", "Model", "param_groups", "make_optimizer", "_check_widths",
                  "DECAY_MODES", "DECAY_PARAMS", "MUON", "Lion", "MuonWithAdamW",
                  "_check_rates", "_check_decay_params", "_decayed",
                  "_check_depth", "_base_stds", "_overrides", "_positive_ints",
                  "SEQ_LEN", "SEQ_TABLES", "_check_seq_len", "load_config"}
MODULE_GLOBALS |= set(HELPERS)


class Namespace:
    """Python identifiers for program names, none clashing with a keyword, a reserved name or
    another name drawn here (torch.fx's ``Namespace``). A name that is already safe is kept;
    a clashing one gets ``_`` appended until it is free (``class`` -> ``class_``), and a name
    that is no identifier at all has its other characters replaced. Deterministic: the same
    names asked in the same order give the same answers."""

    def __init__(self, reserved) -> None:
        self._taken = set(reserved)

    def create(self, name: str) -> str:
        base = re.sub(r"\W", "_", name, flags=re.ASCII) or "_"
        if base[0].isdigit():
            base = "_" + base
        if base.startswith("__"):
            # Python reserves dunders and mangles other "__" names inside a class body, and
            # appending "_" keeps a dunder one: keep one underscore each side instead
            base = f"_{base.strip('_') or 'v'}_"
        candidate = base
        while candidate in self._taken or keyword.iskeyword(candidate):
            candidate += "_"
        self._taken.add(candidate)
        return candidate


def module_name(*parts: str) -> str:
    """A module name for emitted source run in-process: a plain identifier whatever the program
    file was called."""
    return Namespace(()).create("_".join(parts))
