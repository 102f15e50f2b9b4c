"""The emitted module's optimizer code: ``param_groups``, ``make_optimizer``, and the optimizer
classes torch lacks (Lion, and MuonWithAdamW stepping torch's Muon with AdamW).

module.py emits the model and calls ``optimizer_code`` for the rest of the file, which writes
one emitted table, function or class per function here; nothing here imports module.py."""

from __future__ import annotations

import math
from collections.abc import Sequence
from fractions import Fraction

from ..engine.optimizers import Optimizer
from ..engine.terms import fan_dims, param_shape
from ..ir.program import Program
from .literals import quoted

# --- the optimizer: param_groups, make_optimizer, and the classes torch lacks --------------------

_PARAM_GROUPS_DOC = [
    '    """Optimizer groups: params with the same lr * ratio**-c (lr 0 where c is inf), weight',
    "    decay and update rule share one, so torch's multi-tensor kernels see few groups.",
    '    A group\'s "entries" are its SCALING names; its "name" shows the first few.',
    "",
    "    decay says what weight_decay means (required when it is not 0; lr_p is the group's lr):",
    "    'coupled': L2 in the gradient, wd * w added to it (torch's SGD and Adam): under Adam",
    "    its weight against the gradient changes with width; 'decoupled': w shrinks by",
    "    lr_p * wd * w per step (torch's AdamW and Muon), so by less wherever lr_p shrinks with",
    "    width; 'independent': w shrinks by wd * w per step at every width, not multiplied by",
    "    lr_p (a schedule that scales the group's lr scales it too).",
    "",
    "    decay_params says which tensors weight_decay reaches (the rest get 0): 'matrices'",
    "    (default) every param of 2 or more dims, weight matrices and embedding tables, not",
    "    gains or biases (the GPT-2 convention); 'all' every param; a set of SCALING names;",
    "    or a function (name, tensor) -> bool.",
]

_MUON_GROUP_DOC = [
    "",
    "    adamw_lr is the base lr of the params Muon does not take (default: lr).",
    "    Muon's groups (\"muon\": True) are set so that torch.optim.Muon's own lr adjustment",
    "    (adjust_lr_fn='original': lr * sqrt(max(1, fan_out / fan_in)), k below) steps with",
    "    lr * ratio**-c * MUON[name]: the µP factor once, times torch's factor at the base",
    "    width, so the module equals plain Muon there; its decay stays lr_p * wd * w.",
]

# emitted before param_groups: a NaN, infinite or negative rate would be multiplied into every
# group and make every weight NaN (or grow it) at the first step, so it is refused by name
_CHECK_RATES = [
    "def _check_rates(**values):",
    '    """ValueError naming the first value (None: not given) that is not a finite number',
    "    >= 0: NaN, inf or a negative lr, weight decay or eps would make the weights NaN or",
    '    push them uphill at the first step, in every group."""',
    "    for name, value in values.items():",
    "        if value is not None and not 0 <= value < math.inf:",
    '            raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")',
    "",
    "",
]

# emitted before param_groups: which tensors weight decay reaches. By default every param of 2
# or more dims (weight matrices and embedding tables, the GPT-2/nanoGPT convention), not gains,
# biases or other vectors: decaying a LayerNorm gain pulls it to 0, not to its init of 1, and a
# bias has no norm that decay keeps in check; the rule needs only each tensor's shape, so the
# emitted module and a traced model (fromtorch) decide alike.
_DECAYED = [
    'DECAY_PARAMS = ("matrices", "all")',
    "",
    "",
    "def _check_decay_params(decay_params, names):",
    '    """ValueError for a decay_params that is not "matrices", "all", a function or a',
    '    collection of param names, or that names a param the model does not have."""',
    "    if callable(decay_params) or decay_params in DECAY_PARAMS:",
    "        return",
    "    if isinstance(decay_params, str) or not hasattr(decay_params, \"__iter__\"):",
    '        raise ValueError("decay_params must be \'matrices\', \'all\', a function "',
    '                         "(name, tensor) -> bool or a set of param names, not "',
    '                         f"{decay_params!r}")',
    "    unknown = sorted(set(decay_params) - set(names))",
    "    if unknown:",
    '        raise ValueError("decay_params names no param of this model: "',
    '                         f"{\', \'.join(unknown)} (its params: {\', \'.join(names)})")',
    "",
    "",
    "def _decayed(decay_params, name, tensor):",
    '    """Whether weight decay reaches this tensor (see decay_params in param_groups)."""',
    '    if decay_params == "matrices":',
    "        return tensor.dim() >= 2",
    '    if decay_params == "all":',
    "        return True",
    "    if callable(decay_params):",
    "        return bool(decay_params(name, tensor))",
    "    return name in decay_params",
    "",
    "",
]

_LION = [
    "class Lion(torch.optim.Optimizer):",
    '    """Lion (Chen et al. 2023, arXiv 2302.06675): w -= lr * sign(b1 * m + (1 - b1) * g),',
    '    then m = b2 * m + (1 - b2) * g; weight decay lr * weight_decay * w (decoupled)."""',
    "",
    "    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):",
    '        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})',
    "",
    "    @torch.no_grad()",
    "    def step(self, closure=None):",
    "        loss = None",
    "        if closure is not None:",
    "            with torch.enable_grad():",
    "                loss = closure()",
    "        for group in self.param_groups:",
    '            beta1, beta2 = group["betas"]',
    '            for p in group["params"]:',
    "                if p.grad is None:",
    "                    continue",
    "                state = self.state[p]",
    '                if "exp_avg" not in state:',
    '                    state["exp_avg"] = torch.zeros_like(p)',
    '                m = state["exp_avg"]',
    '                p.mul_(1 - group["lr"] * group["weight_decay"])',
    '                p.add_(torch.sign(m * beta1 + p.grad * (1 - beta1)), alpha=-group["lr"])',
    "                m.mul_(beta2).add_(p.grad, alpha=1 - beta2)",
    "        return loss",
]

_MUON_WITH_ADAMW = [
    "class MuonWithAdamW:",
    '    """torch.optim.Muon over the groups marked "muon" (2-D matrices only), torch.optim.AdamW',
    "    over the rest, stepped as one optimizer. muon and adamw are keyword arguments for each",
    '    (e.g. muon={"momentum": 0.95}, adamw={"betas": (0.9, 0.95)})."""',
    "",
    "    def __init__(self, groups, lr, muon=None, adamw=None):",
    '        spectral = [g for g in groups if g.get("muon")]',
    '        rest = [g for g in groups if not g.get("muon")]',
    "        self.optimizers = []",
    "        if spectral:",
    "            self.optimizers.append(torch.optim.Muon(",
    '                spectral, lr=lr, adjust_lr_fn="original", **(muon or {})))',
    "        if rest:",
    "            self.optimizers.append(torch.optim.AdamW(rest, lr=lr, **(adamw or {})))",
    "        self.param_groups = [g for opt in self.optimizers for g in opt.param_groups]",
    "",
    "    def zero_grad(self, set_to_none=True):",
    "        for opt in self.optimizers:",
    "            opt.zero_grad(set_to_none=set_to_none)",
    "",
    "    def step(self, closure=None):",
    "        loss = None",
    "        if closure is not None:",
    "            with torch.enable_grad():",
    "                loss = closure()",
    "        for opt in self.optimizers:",
    "            opt.step()",
    "        return loss",
    "",
    "    def state_dict(self):",
    '        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}',
    "",
    "    def load_state_dict(self, state):",
    '        for opt, one in zip(self.optimizers, state["optimizers"], strict=True):',
    "            opt.load_state_dict(one)",
]


def _make_optimizer_doc(muon: bool, derived: str, same: Sequence[str]) -> list[str]:
    passed = " (and adamw_lr, passed on when given)" if muon else ""
    names = " or ".join(same)
    return [
        '    """A torch.optim optimizer over param_groups (default: the derived one);',
        f"    weight_decay, decay and decay_params{passed} as in param_groups. optimizer is",
        f"    {names}:",
        f"    the exponents here are derived for {derived}, and another optimizer needs",
        "    its own (tensorprog derive --optimizer NAME emits its module)"
        + ("; momentum is SGD with" if "momentum" in same else "."),
        *(["    momentum 0.9 unless given."] if "momentum" in same else []),
        "    param_groups(model, lr) feeds an optimizer of your own that scales as",
        f"    {derived} does. config (the file tensorprog tune -o wrote, or its JSON)",
        '    gives the tuned lr instead, checked by load_config."""',
    ]


# optimizers whose steps scale alike, so that one's exponents hold for the other: Adam and AdamW
# differ only in where the decay goes (param_groups' decay), SGD and momentum in averaging
# gradients of the same scale (optimizers.py)
SAME_EXPONENTS = {
    "sgd": ("sgd", "momentum"),
    "momentum": ("sgd", "momentum"),
    "adam": ("adam", "adamw"),
    "adamw": ("adam", "adamw"),
    "lion": ("lion",),
    "muon": ("muon",),
}
_TORCH_CLASSES = {
    "sgd": "torch.optim.SGD",
    "momentum": "torch.optim.SGD",
    "adam": "torch.optim.Adam",
    "adamw": "torch.optim.AdamW",
    "lion": "Lion",
    "muon": "MuonWithAdamW",
}


def _base_size(program: Program, dim: str | None, base: int) -> Fraction:
    if dim is None:
        return Fraction(1)
    d = program.dim_table[dim]
    return d.mult * base if d.infinite else Fraction(d.size)


def muon_params(program: Program, optimizer: Optimizer, params: Sequence[str]) -> list[str]:
    """The params an optimizer orthogonalises (its spectral rule's), in declaration order."""

    def infinite(dim):
        return dim is not None and program.dim_table[dim].infinite

    return [p for p in params if optimizer.rule_for(param_shape(program, p, infinite)).spectral]


def optimizer_code(
    program: Program,
    optimizer: Optimizer,
    blocks: list,
    attr_of: str,
    base: int,
    depth: bool = False,
    eps: bool = False,
) -> list[str]:
    """param_groups and make_optimizer, with Muon's and Lion's classes where derived for them;
    with ``depth``, each group's lr carries depth_ratio**-cL too; with ``eps``, each group has
    Adam's eps scaled as its params' gradient entries (SCALING's eps and epsL)."""
    names = [p.name for p in program.params if not p.is_scale]
    muon = muon_params(program, optimizer, names) if optimizer.matrix_rule else []
    out = _muon_table(program, base, muon) if optimizer.matrix_rule is not None else []
    out += _param_groups(blocks, attr_of, bool(muon), depth, eps)
    own = {"lion": _LION, "muon": _MUON_WITH_ADAMW}.get(optimizer.name)
    if own:
        out += [*own, "", ""]
    return out + _make_optimizer(optimizer, bool(muon), eps)


def _muon_table(program: Program, base: int, muon: list[str]) -> list[str]:
    """MUON: the matrices Muon orthogonalises, each with torch's Muon lr factor at the base."""
    out = [
        "# the matrices Muon orthogonalises (the rest take AdamW), and torch's Muon lr",
        "# factor sqrt(max(1, fan_out / fan_in)) at the base width",
        "MUON = {" + ("" if muon else "}"),
    ]
    for p in muon:
        fin, fout = fan_dims(program, p)
        ratio = _base_size(program, fout, base) / _base_size(program, fin, base)
        out.append(f"    {quoted(p)}: {math.sqrt(max(1.0, float(ratio)))!r},")
    if muon:
        out.append("}")
    return out + ["", ""]


def _param_groups(blocks: list, attr_of: str, muon: bool, depth: bool, eps: bool) -> list[str]:
    """DECAY_MODES and param_groups: one optimizer group per (c, decay, update rule), each with
    lr * ratio**-c (and depth_ratio**-cL), Muon's lr factor divided out, and Adam's eps."""
    tensors = "model._tensors(name, spec)" if blocks else f"[getattr(model, {attr_of})]"
    out = [
        *_CHECK_RATES,
        *_DECAYED,
        'DECAY_MODES = ("coupled", "decoupled", "independent")',
        "",
        "",
        "def param_groups(model, lr, weight_decay=0.0, decay=None"
        + (", adamw_lr=None" if muon else "")
        + (", eps=1e-8" if eps else "")
        + ', decay_params="matrices"):',
        *_param_groups_doc(muon, depth, eps),
        "    _check_rates(lr=lr, weight_decay=weight_decay"
        + (", adamw_lr=adamw_lr" if muon else "")
        + (", eps=eps" if eps else "")
        + ")",
        "    if decay is None and weight_decay:",
        "        raise ValueError(\"say what weight_decay means: decay='coupled', \"",
        "                         \"'decoupled' or 'independent'\")",
        "    if decay is not None and decay not in DECAY_MODES:",
        "        raise ValueError(f\"decay must be one of {', '.join(DECAY_MODES)}, not \"",
        '                         f"{decay!r}")',
        "    _check_decay_params(decay_params, list(SCALING))",
        "    ratio = model.width / model.base_width",
        *(["    depth_ratio = model.depth / model.base_depth"] if depth else []),
        "    groups = {}",
        "    for name, spec in SCALING.items():",
        "        # c = inf: never trained (ratio ** -inf would be inf below the base width)",
        '        scale = 0.0 if spec["c"] == math.inf else ratio ** -spec["c"]',
        *(
            [
                '        scale = 0.0 if spec["cL"] == math.inf else scale * depth_ratio ** '
                '-spec["cL"]'
            ]
            if depth
            else []
        ),
        (
            "        lr_p = (lr if name in MUON or adamw_lr is None else adamw_lr) * scale"
            if muon
            else "        lr_p = lr * scale"
        ),
        '        wd = weight_decay / lr_p if decay == "independent" and lr_p else weight_decay',
        f"        tensors = {tensors}",
        *(['        eps_p = eps * ratio ** -spec.get("eps", 0.0)'] if eps else []),
        *(['        eps_p *= depth_ratio ** -spec.get("epsL", 0.0)'] if eps and depth else []),
    ]
    key = '(spec["c"], ' + ('spec["cL"], ' if depth else "")
    more = ' "eps": eps_p,' if eps else ""
    if muon:
        out += [
            "        spectral = name in MUON",
            "        if spectral:  # torch's Muon multiplies lr by k: divide it out",
            "            rows, cols = tensors[0].shape",
            "            k = math.sqrt(max(1.0, rows / cols)) / MUON[name]",
            "            lr_p, wd = lr_p / k, wd * k",
            "        for tensor in tensors:",
            "            wd_t = wd if _decayed(decay_params, name, tensor) else 0.0",
            f"            group = groups.setdefault({key}lr_p, wd_t, spectral"
            + (", eps_p" if eps else "")
            + "), {",
            '                "params": [], "lr": lr_p, "weight_decay": wd_t, "muon": spectral,',
            '                "entries": []})',
            *(
                [
                    "            if not spectral:  # torch's Muon has an eps of its own",
                    '                group["eps"] = eps_p',
                ]
                if eps
                else []
            ),
        ]
    else:
        out += [
            "        for tensor in tensors:",
            "            wd_t = wd if _decayed(decay_params, name, tensor) else 0.0",
            f"            group = groups.setdefault({key}wd_t"
            + (", eps_p" if eps else "")
            + "), {",
            f'                "params": [], "lr": lr_p, "weight_decay": wd_t,{more}',
            '                "entries": []})',
        ]
    return out + [
        '            group["params"].append(tensor)',
        '            if name not in group["entries"]:',
        '                group["entries"].append(name)',
        "    for key, group in groups.items():",
        '        names = group["entries"]',
        '        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""',
        (
            '        group["name"] = f"c={key[0]:g}, cL={key[1]:g}: {\', \'.join(names[:3])}{more}"'
            if depth
            else '        group["name"] = f"c={key[0]:g}: {\', \'.join(names[:3])}{more}"'
        ),
        "    return list(groups.values())",
        "",
        "",
    ]


def _param_groups_doc(muon: bool, depth: bool, eps: bool) -> list[str]:
    return [
        *_PARAM_GROUPS_DOC,
        *(_MUON_GROUP_DOC if muon else []),
        *(
            [
                "",
                "    With a depth, a group's lr is also multiplied by depth_ratio**-cL",
                "    (depth_ratio = depth / base_depth).",
            ]
            if depth
            else []
        ),
        *(
            [
                "",
                "    Each "
                + ("AdamW " if muon else "")
                + "group also has one eps: Adam's eps scaled as its params' gradient entries",
                "    (eps * ratio**-eps"
                + (" * depth_ratio**-epsL" if depth else "")
                + " from SCALING), eps itself at the base.",
            ]
            if eps
            else []
        ),
        '    """',
    ]


# make_optimizer's lr (and optimizer) from a file tensorprog tune -o wrote, for the model's base
_CONFIG_LR = [
    "    if config is not None:",
    "        if lr is not None:",
    '            raise ValueError("give lr or config (which holds the tuned lr), not both")',
    "        tuned = load_config(config)",
    '        lr, optimizer = tuned["lr"], optimizer or tuned["optimizer"]',
    "        if model.base_width != BASE_WIDTH:",
    '            raise ValueError(f"the lr was tuned for base_width {BASE_WIDTH}, the model\'s "',
    '                             f"is {model.base_width}")',
    "    elif lr is None:",
    '        raise TypeError("make_optimizer() needs lr, or config=FILE (tensorprog tune -o)")',
]


def _make_optimizer(optimizer: Optimizer, muon: bool, eps: bool) -> list[str]:
    """make_optimizer: the torch optimizer over param_groups, refusing an optimizer whose steps
    scale otherwise than the one the exponents are derived for."""
    same = SAME_EXPONENTS[optimizer.name]
    classes = ", ".join(f"{quoted(n)}: {_TORCH_CLASSES[n]}" for n in same)
    return [
        "def make_optimizer(model, lr=None, optimizer=None, weight_decay=0.0, decay=None,",
        '                   decay_params="matrices", config=None, **kwargs):',
        *_make_optimizer_doc(muon, optimizer.name, same),
        *_CONFIG_LR,
        f"    name = optimizer or {optimizer.name!r}",
        f"    classes = {{{classes}}}",
        "    if name not in classes:",
        f'        raise ValueError("this module\'s exponents are derived for {optimizer.name}, "',
        f'                         f"not {{name!r}} (use {" or ".join(same)}): emit one for "',
        "                         f\"{name} with 'tensorprog derive --optimizer {name}', or \"",
        '                         "pass param_groups(model, lr) to an optimizer that scales "',
        f'                         "as {optimizer.name} does")',
        "    groups = param_groups(model, lr, weight_decay, decay"
        + (', kwargs.pop("adamw_lr", None)' if muon else "")
        + (', eps=kwargs.pop("eps", 1e-8)' if eps else "")
        + ",",
        "                          decay_params=decay_params)",
        *(
            [
                "    if decay is not None:",
                "        # torch's Adam adds the decay to the gradient, its AdamW decouples it",
                '        name = "adam" if decay == "coupled" else "adamw"',
            ]
            if "adam" in same
            else []
        ),
        *(
            [
                '    if decay == "coupled":',
                f'        raise ValueError("{optimizer.name} decays decoupled only: use "',
                "                         \"decay='decoupled' or 'independent'\")",
            ]
            if optimizer.name in ("lion", "muon")
            else []
        ),
        *(
            ['    if name == "momentum":', '        kwargs.setdefault("momentum", 0.9)']
            if "momentum" in same
            else []
        ),
        "    return classes[name](groups, lr=lr, **kwargs)",
        "",
    ]
