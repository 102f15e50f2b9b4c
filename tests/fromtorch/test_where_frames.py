"""A refusal's position is the model's line, never a frame of a package that only passes the call
on: torch, tensorprog, or HF's kernel hub, whose function module calls the model's function."""

import sys
import types

from tensorprog.fromtorch.where import line_span


def test_a_dispatcher_frame_is_skipped(tmp_path, monkeypatch):
    hub = tmp_path / "kernels"
    hub.mkdir()
    (hub / "__init__.py").write_text("")
    (hub / "layer.py").write_text("def forward(f):\n    return f()\n")
    model = tmp_path / "modeling_x.py"
    model.write_text("def mixer(x):\n    y = conv(x)\n")
    fake = types.ModuleType("kernels")
    fake.__file__ = str(hub / "__init__.py")
    monkeypatch.setitem(sys.modules, "kernels", fake)
    span = line_span([(str(model), 2), (str(hub / "layer.py"), 2)])
    assert span is not None and span.filename == str(model) and span.line == 2


def test_without_the_dispatcher_its_frame_is_the_users(tmp_path, monkeypatch):
    # a file of the user's own named layer.py in a folder kernels/ is not skipped unless the
    # package of that name is the one imported
    monkeypatch.delitem(sys.modules, "kernels", raising=False)
    mine = tmp_path / "kernels"
    mine.mkdir()
    (mine / "layer.py").write_text("def forward(f):\n    return f()\n")
    span = line_span([(str(mine / "layer.py"), 2)])
    assert span is not None and span.line == 2
