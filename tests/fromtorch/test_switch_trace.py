"""A piecewise function of a vector's sign traced (fromtorch/ops_switch.py): ``torch.where(x > 0,
a, b)`` whose pieces meet at 0 is a(relu(x)) + b(min(x, 0)), which computes the model's output
(the shared oracle) for transformers' XIELUActivation, for xIELU written by hand and for
variants of the switch (>=, <, a leaky relu, elu); it derives what examples/xielu.tp derives
by hand (the alphas one trained number each, Θ(1), not width-connected). Pieces that jump, meet
at a number other than 0, mix x's coordinates or read another vector, a comparison with another
number, and a comparison or piece read elsewhere are refused at their line."""

import pytest
from conftest import abc_by_target, the_check_reads_the_program, traced_computes_the_model

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import tensorprog as tp  # noqa: E402
from tensorprog.errors import TensorProgError  # noqa: E402
from tensorprog.fromtorch import from_torch  # noqa: E402

WIDTHS = (16, 32)
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]


def _tokens(model):
    return (torch.arange(16).remainder(13).view(2, 8),)


def _xielu(h, alpha_p, alpha_n, eps=-1e-6, beta=0.5):
    """transformers' XIELUActivation._xielu_python, its params' functions given."""
    return torch.where(h > 0, alpha_p * h * h + beta * h,
                       (torch.expm1(torch.min(h, torch.tensor(eps))) - h) * alpha_n + beta * h)


class Act(nn.Module):
    """A switch of the sign of h, in a given form (or one the tracer must refuse)."""

    def __init__(self, n, form):
        super().__init__()
        self.form = form
        self.alpha_p, self.alpha_n = nn.Parameter(torch.randn(1)), nn.Parameter(torch.randn(1))
        self.other = nn.Linear(n, 4 * n)

    def forward(self, h, x):
        ap, an = F.softplus(self.alpha_p), 0.5 + F.softplus(self.alpha_n)
        form = self.form
        if form == "xielu":
            return _xielu(h, ap, an)
        if form == "ge":  # at 0 both pieces are 0: >= is > there
            return torch.where(h >= 0, ap * h * h + 0.5 * h, (torch.expm1(h) - h) * an + 0.5 * h)
        if form == "lt":  # the pieces' roles swapped
            return torch.where(h < 0, (torch.expm1(h) - h) * an + 0.5 * h, ap * h * h + 0.5 * h)
        if form == "elu":  # <=, the pieces' roles swapped: elu itself
            return torch.where(h <= 0.0, torch.expm1(h), h)
        if form == "leaky":  # 0.9 relu(h) + 0.1 h
            return torch.where(h > 0, h, 0.1 * h)
        if form == "gain":  # a param per feature in a piece: each coordinate its own
            return torch.where(h > 0, h, self.other.bias.sigmoid() * h)
        if form == "zeros":  # relu written as a where
            return torch.where(h > 0, h, torch.zeros_like(h))
        if form == "gap":  # eps = -0.1: its pieces differ by 0.095 alpha_n at 0
            return _xielu(h, ap, an, eps=-0.1)
        if form == "other":  # a piece that reads another vector
            return torch.where(h > 0, h * self.other(x), h)
        if form == "mixed":  # a piece that mixes x's coordinates: not coordinatewise
            return torch.where(h > 0, h * h.mean(-1, keepdim=True), h)
        if form == "threshold":
            return torch.where(h > 0.5, h, 0.5 * h)
        if form == "cond_read":
            return torch.where(h > 0, h, 0.1 * h) + (h > 0).float()
        if form == "piece_read":
            sq = h * h
            return torch.where(h > 0, sq, 0.0) + sq
        if form == "meet_half":  # both pieces 1/2 at 0
            return torch.where(h > 0, torch.sigmoid(h), torch.sigmoid(h) * torch.sigmoid(h) * 2)
        raise ValueError(form)


class MLP(nn.Module):
    def __init__(self, n, form="xielu"):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.up, self.down = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)
        self.hf = form == "hf"
        if self.hf:
            from transformers.activations import XIELUActivation

            self.act = XIELUActivation(dtype=torch.float32)
        else:
            self.act = Act(n, form)

    def forward(self, idx):
        x = self.e(idx)
        h = self.up(x)
        return self.out(x + self.down(self.act(h) if self.hf else self.act(h, x)))


@pytest.mark.parametrize("form", ["hf", *(
    pytest.param(f, marks=pytest.mark.slow)
    for f in ("leaky", "xielu", "ge", "lt", "elu", "zeros", "gain"))])
def test_a_switch_whose_pieces_meet_computes_the_model(form):
    traced = from_torch(lambda n: MLP(n, form), WIDTHS, _tokens)
    assert traced_computes_the_model(traced, lambda n: MLP(n, form), _tokens) < 1e-10
    if form == "hf":  # the pieces' vectors at relu(x) and min(x, 0) are none the model holds:
        # the check reads the where's output (the model's), not them
        read = the_check_reads_the_program(traced, lambda n: MLP(n, form), _tokens)
        assert "where" in read and not {"mul", "sub", "add_1", "add_2"} & set(read)
    if form == "leaky":  # one function plus a multiple of its input
        assert "where = 0.9 * relu(linear) + 0.1 * linear" in traced.source


def test_xielu_traced_differs_from_the_model_by_at_most_its_eps_where_it_is_approximated():
    # the one approximation: min(m, eps) of m = min(h, 0) read as m, off by alpha_n·|expm1(eps)|
    # for h in (eps, 0] and exact elsewhere (the pieces as traced meet at 0)
    h = torch.tensor([-1.0, -1e-6, -5e-7, 0.0, 1e-7, 2.0], dtype=torch.float64)
    ap, an = torch.tensor(0.8, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    m = h.clamp(max=0)
    traced = ap * h.relu() ** 2 + 0.5 * h.relu() + an * (F.elu(h) - h) + 0.5 * m
    diff = (traced - _xielu(h, ap, an)).abs()
    assert diff[[0, 1, 4, 5]].max() < 1e-15 and 0 < diff[3] <= 0.8 * 1e-6


def test_the_traced_xielu_derives_what_the_hand_written_program_derives():
    traced = from_torch(lambda n: MLP(n, "xielu"), WIDTHS, _tokens)  # the hand-written where
    by_target = abc_by_target(traced)
    hand = tp.derive(tp.parse_file(ROOT / "examples" / "xielu.tp"), "adam").abc
    assert by_target["act.alpha_p"] == by_target["act.alpha_n"] == (
        hand["ap"].a, hand["ap"].b, hand["ap"].c) == (0, 0, 0)  # Θ(1) numbers, Adam LR Θ(1)
    assert by_target["up.weight"] == by_target["down.weight"] == (
        hand["U"].a, hand["U"].b, hand["U"].c)
    # p * p of a Θ(1) vector: exponents add, 0 + 0; the activation's output Θ(1)
    vectors = tp.derive(traced.program, "adam").as_dict()["vectors"]
    squares = [v for v in vectors if v.startswith(("mul", "where"))]
    assert len(squares) >= 4 and all(vectors[v]["init"] == vectors[v]["update"] == "0"
                                     for v in squares)


@pytest.mark.parametrize(("form", "match"), [
    ("gap", r"a comparison of a traced value \(x > 0\.0\).* here the pieces differ by "
            r"0\.\d+ at x = 0.*, a jump"),
    ("other", r"a piece of a piecewise function .* that reads a vector other than x"),
    ("mixed", r"the op mean in a piece of a piecewise function .* computed from the same "
              r"coordinate of x alone"),
    ("threshold", r"a comparison of a traced value \(x > 0\.5\).* it is traced against 0 "
                  r"alone"),
    ("cond_read", r"a comparison of a traced value \(x > 0\.0\).* traced as the condition of "
                  r"one where alone"),
    ("piece_read", r"a value computed from a piece of a piecewise function .* read by anything "
                   r"but the where"),
    ("meet_half", r"a piecewise function whose pieces meet at 0\.5, not 0"),
])
def test_a_switch_that_jumps_or_reads_elsewhere_is_refused_at_its_line(form, match):
    with pytest.raises(TensorProgError, match=r"test_switch_trace\.py:\d+:\d+: error: "
                       r"cannot trace " + match):
        from_torch(lambda n: MLP(n, form), WIDTHS, _tokens)


def _tent(t):
    """0 outside (-4.4, -4.1) and 0.15 at -4.25: between the points a fit once sampled (-4.5,
    -4.0 on ±256; [-4, 4] alone finely)."""
    return (t + 4.4).relu() - 2 * (t + 4.25).relu() + (t + 4.1).relu()


@pytest.mark.parametrize(("find", "fitted", "off"), [
    ("identify", lambda t: t.relu(), _tent),  # where(h > 0, h, tent(h))
    ("identify_plus_linear", lambda t: 0.9 * t.relu() + 0.1 * t, _tent),
    ("identify_power", lambda t: t.relu() ** 2, lambda t: 100 * (-t - 5).relu()),  # past -4
    ("identify_stretched", lambda t: F.silu(1.702 * t) / 1.702,  # quick_gelu, checked on [-4, 4]
     lambda t: 100 * (-t - 5).relu()),
    ("identify_scaled", lambda t: 30 * torch.tanh(t / 30),  # a soft-cap, checked on ±120
     lambda t: 100 * (-t - 200).relu()),
])
def test_a_chain_that_leaves_a_fit_between_or_beyond_its_points_is_no_fit(find, fitted, off):
    # a where's pieces are chains of numbers and functions: a piece that leaves the function
    # fitted only where no point was sampled would trace as that function, a silent wrong
    # answer wherever the model's vector reaches there
    from tensorprog.fromtorch import ops_pointwise, values

    fit = getattr(values, find, None) or getattr(ops_pointwise, find)
    assert fit(fitted) is not None and fit(lambda t: fitted(t) + off(t)) is None


class Far(nn.Module):
    """A switch whose negative piece is 0 on [-5, 0] and grows past -5: relu(h)² on [-4, 4]."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.up, self.down = nn.Linear(n, 4 * n), nn.Linear(4 * n, n)

    def forward(self, idx):
        h = self.up(self.e(idx))
        return self.out(self.down(torch.where(h > 0, h * h, 100 * F.relu(-h - 5))))


@pytest.mark.slow
def test_a_switch_whose_piece_leaves_its_fit_past_the_sampled_range_is_refused():
    with pytest.raises(TensorProgError, match=r"test_switch_trace\.py:\d+:\d+: error: cannot "
                       r"trace a coordinatewise function that is none of"):
        from_torch(Far, WIDTHS, _tokens)


class GainedGate(nn.Module):
    """xIELU of the gate block of a fused gate/up layer times a fixed gain of one value per
    block (Falcon-H1's mup_vector): the where's x is a block of the layer with its gain."""

    def __init__(self, n):
        super().__init__()
        self.e, self.out = nn.Embedding(13, n), nn.Linear(n, 13)
        self.gate_up, self.down = nn.Linear(n, 4 * n, bias=False), nn.Linear(2 * n, n)
        self.alpha_p, self.alpha_n = nn.Parameter(torch.randn(1)), nn.Parameter(torch.randn(1))
        self.register_buffer("mup_vector", torch.tensor([0.5, 2.0]).repeat_interleave(2 * n),
                             persistent=False)

    def forward(self, idx):
        x = self.e(idx)
        g, u = (self.gate_up(x) * self.mup_vector).chunk(2, dim=-1)
        ap, an = F.softplus(self.alpha_p), 0.5 + F.softplus(self.alpha_n)
        return self.out(x + self.down(_xielu(g, ap, an) * u))


def test_a_switch_of_a_gained_block_computes_the_model_and_the_check_reads_it():
    # the gate's block is the layer's rows times 0.5, made a vector once; its relu and min
    # written alike by the trace and by the check's graph (one coefficient node each)
    traced = from_torch(GainedGate, WIDTHS, _tokens)
    assert traced_computes_the_model(traced, GainedGate, _tokens) < 1e-10
    read = the_check_reads_the_program(traced, GainedGate, _tokens)
    assert "where" in read
