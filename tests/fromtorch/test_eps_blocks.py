"""Adam's eps per block of one tensor as a scale of its gradient (fromtorch/gradscale.py): a
tensor whose row block B has its gradient times c = e_A / e_B, in a group of eps e_A, steps
exactly as two tensors in groups of eps e_A and e_B, under Adam and AdamW (whose decay acts on
the param); not under Adam's L2 decay, which enters the gradient after the scale (param_groups
refuses it: tests/fromtorch/test_focal_trace.py)."""

import pytest

torch = pytest.importorskip("torch")

from tensorprog.fromtorch.gradscale import grad_hook  # noqa: E402

EPS_A, EPS_B = 1e-2, 1e-4  # of the order of the gradient entries: eps matters to the step
ROWS_A = 3


def _data():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(5, 4, generator=g, dtype=torch.float64)
    xs = [torch.randn(8, 4, generator=g, dtype=torch.float64) for _ in range(4)]
    return w, xs


def _loss(w, x):
    return torch.tanh(x @ w.t()).pow(3).mean() * 1e-1


def _two_tensors(opt, **kw):
    """The reference: block A and block B as params of their own, each with its own eps."""
    w, xs = _data()
    a = w[:ROWS_A].clone().requires_grad_()
    b = w[ROWS_A:].clone().requires_grad_()
    o = opt([{"params": [a], "eps": EPS_A}, {"params": [b], "eps": EPS_B}], lr=1e-2, **kw)
    for x in xs:
        o.zero_grad()
        _loss(torch.cat([a, b]), x).backward()
        o.step()
    return torch.cat([a, b]).detach()


def _one_tensor(opt, scaled=True, **kw):
    w, xs = _data()
    w.requires_grad_()
    if scaled:
        scale = torch.ones_like(w)
        scale[ROWS_A:] = EPS_A / EPS_B
        w.register_hook(grad_hook(scale))
    o = opt([{"params": [w], "eps": EPS_A}], lr=1e-2, **kw)
    for x in xs:
        o.zero_grad()
        _loss(w, x).backward()
        o.step()
    return w.detach()


@pytest.mark.parametrize("opt, kw", [(torch.optim.Adam, {}),
                                     (torch.optim.AdamW, {"weight_decay": 0.1})])
def test_a_gradient_scaled_block_steps_as_a_tensor_of_its_own_eps(opt, kw):
    want = _two_tensors(opt, **kw)
    torch.testing.assert_close(_one_tensor(opt, **kw), want, rtol=1e-12, atol=1e-15)
    # the oracle can fail: without the scale, block B steps with eps A
    assert not torch.allclose(_one_tensor(opt, scaled=False, **kw)[ROWS_A:], want[ROWS_A:],
                              rtol=1e-6, atol=0)


def test_adams_l2_decay_enters_after_the_scale_and_breaks_it():
    # why param_groups refuses decay="coupled" on such a tensor
    want = _two_tensors(torch.optim.Adam, weight_decay=0.1)
    got = _one_tensor(torch.optim.Adam, weight_decay=0.1)
    assert not torch.allclose(got[ROWS_A:], want[ROWS_A:], rtol=1e-6, atol=0)


@pytest.mark.slow  # torch.compile's first call: about 2 s
def test_the_scale_reaches_the_gradient_of_a_compiled_model():
    # the hook is on the param object, which torch.compile keeps: a compiled forward's backward
    # still hands the leaf its gradient through it
    torch.manual_seed(0)
    model, plain = torch.nn.Linear(4, 5), torch.nn.Linear(4, 5)
    plain.load_state_dict(model.state_dict())
    scale = torch.ones(5, 4)
    scale[ROWS_A:] = EPS_A / EPS_B
    model.weight.register_hook(grad_hook(scale))
    x = torch.randn(8, 4)
    torch.tanh(torch.compile(model, backend="aot_eager")(x)).sum().backward()
    torch.tanh(plain(x)).sum().backward()
    assert torch.equal(model.weight.grad, plain.weight.grad * scale)
