"""The error catalogue: (bad program, expected message) pairs. Every user error is a
TensorProgError that points at the right line and column, shows the line with a caret, and says
what to do next; the CLI prints it and exits with status 2, never a traceback."""

from __future__ import annotations

import re

import pytest

import tensorprog as tp
from tensorprog.cli.main import main

HEAD = ("width n = 8\ndim d = 3\ndim k = 2\ninput x : [d]\nparam W : [n, d]\nparam V : [k, n]\n"
        "param b : [n]\n")  # 7 lines; the bad line below is line 8
P, S = tp.ParseError, tp.SemanticError
IMG = ("width n = 8\ndim c = 3\ndim s = 8\ndim k = 3\ninput img : image[c, s, s]\n"
       "param K : [n, c, k, k]\nparam R : [c, n]\n")  # 7 lines; the bad line below is line 8
SEQ = ("width n = 8\ndim V = 5\ndim t = 3\ndim dh = n / 2\ninput tok : tokens[t, V]\n"
       "param E : [n, V]\nh = E @ tok\n")  # 7 lines; the bad line below is line 8

# id: (program, error class, message regex, (line, column) of the first error)
CATALOGUE = {
    "missing-equals": ("width n 8\n", P, r"unexpected '8'.*\n.*\n.*\nhelp: expected '='", (1, 9)),
    "unbalanced-paren": (HEAD + "h = relu((W @ x)\noutput y = V @ h\n", P,
                         r"unexpected end of line", (8, 17)),
    "stray-character": (HEAD + "h = W @ x $ b\noutput y = V @ h\n", P, r"unexpected '\$'",
                        (8, 11)),
    "shape-not-bracketed": ("width n = 8\ninput x : (n)\n", P, r"unexpected '\('", (2, 11)),
    "undefined-name": (HEAD + "h = W @ xx\noutput y = V @ h\n", S,
                       r"undefined name 'xx'(.|\n)*did you mean 'x'\?", (8, 9)),
    "redefined-name": (HEAD + "h = W @ x\nh = relu(h)\noutput y = V @ h\n", S,
                       r"'h' is already defined \(line 8\)", (9, 1)),
    "undeclared-dim": ("width n = 8\ninput x : [d_in]\n", S, r"undeclared dim 'd_in'", (2, 12)),
    "matmul-shape": (HEAD + "h = W @ b\noutput y = V @ h\n", S,
                     r"shape mismatch in '@': W is \[n, d\] but the vector is \[n\]", (8, 5)),
    "sum-shape": (HEAD + "h = W @ x + x\noutput y = V @ h\n", S,
                  r"shape mismatch in '\+': \[n\] and \[d\]", (8, 5)),
    "product-shape": (HEAD + "h = (W @ x) * x\noutput y = V @ h\n", S,
                      r"shape mismatch in '\*'", (8, 5)),
    "dot-shape": (HEAD + "output s = dot(b, x)\n", S, r"shape mismatch in dot", (8, 12)),
    "vector-left-of-matmul": (HEAD + "h = x @ b\noutput y = V @ h\n", S,
                              r"left side of @ must be a matrix param", (8, 5)),
    "unknown-function": (HEAD + "h = rellu(W @ x)\noutput y = V @ h\n", S,
                         r"unknown function 'rellu'(.|\n)*did you mean 'relu'", (8, 5)),
    "nonlin-arity": (HEAD + "h = relu(W @ x, b)\noutput y = V @ h\n", S,
                     r"relu takes 1 argument, got 2", (8, 5)),
    "dot-arity": (HEAD + "output s = dot(b)\n", S, r"dot takes 2 or 3 arguments, got 1", (8, 12)),
    "transpose-vector": (HEAD + "output y = b.T @ x\n", S, r"only a matrix param can be "
                         r"transposed", (8, 12)),
    "transpose-shape": (HEAD + "output y = W.T @ x\n", S,
                        r"W.T is \[d, n\] but the vector is \[d\](.|\n)*first dim", (8, 12)),
    "head-dot-without-sequence": (HEAD + "output s = dot(b, b, k)\n", S,
                                  r"compares tokens, but the program has no sequence", (8, 22)),
    "head-dot-not-a-dim": (SEQ + "output s = dot(h, h, h)\n", S,
                           r"third argument of dot must be the head dim", (8, 22)),
    "head-dim-does-not-divide": (SEQ + "output s = dot(tok, tok, dh)\n", S,
                                 r"head dim dh does not divide V", (8, 12)),
    "mix-without-heads": (SEQ + "output o = mix(h, h)\n", S,
                          r"mix\(p, v\) needs attention weights p", (8, 12)),
    "infinite-sequence": ("width n = 8\ndim V = 5\ninput t : tokens[n, V]\n", S,
                          r"sequence dim n must be finite", (3, 1)),
    "scale-not-positive": ("width n = 8\nscale s = 0\n", S, r"scale s must be positive", (2, 1)),
    "kernel-on-a-vector": (HEAD + "dim kk = 3\nparam K : [n, d, kk, kk]\nh = K @ x + b\n"
                           "output y = V @ (W @ x + h)\n",
                           S, r"K is a convolution kernel, but x is not an image", (10, 5)),
    "infinite-kernel": (HEAD + "param K : [n, n, n, n]\n", S,
                        r"kernel K: its spatial size must be finite", (8, 1)),
    "head-dim-at-base": ("width n = 64\ndim V = 5\ndim t = 3\ndim dh = 24\n"
                         "input tok : tokens[t, V]\nparam E : [n, V]\nh = E @ tok\n"
                         "output s = dot(h, h, dh)\n", S,
                         r"at the base width 64, the head dim dh = 24 does not divide n = 64",
                         (8, 12)),
    "fractional-dim": ("width n = 64\ndim h = n / 3\n", S,
                       r"dim h = 1/3 x 64 is not a whole number", (2, 1)),
    "pool-a-vector": (HEAD + "output y = V @ avgpool(W @ x)\n", S,
                      r"avgpool needs an image, but y_1 has no pixels", (8, 16)),
    "transposed-kernel": (IMG + "output y = R @ global_pool(K.T @ img)\n", S,
                          r"a convolution kernel cannot be transposed", (8, 28)),
    "pixel-clash": (IMG + "h = K @ img\noutput y = R @ global_pool(h + avgpool(h))\n", S,
                    r"different spatial sizes \(4x4 pixels, 8x8 pixels\)", (9, 28)),
    "infinite-image": ("width n = 8\ndim c = 3\ninput img : image[c, n, n]\n", S,
                       r"height and width must be finite", (3, 1)),
    "no-output": (HEAD + "h = W @ x + b\ny = V @ h\n", S, r"the program has no output", (9, 1)),
    "no-width": ("dim d = 3\ninput x : [d]\n", S, r"declares no width", (2, 1)),
    "width-twice": ("width n = 8\nwidth m = 8\n", S, r"width is declared twice", (2, 1)),
    "cycle": (HEAD + "h = W @ x + g\ng = relu(h)\noutput y = V @ g\n", S,
              r"'g' is used before it is defined(.|\n)*cannot contain a cycle", (8, 13)),
    "constant-plus-vector": (HEAD + "h = W @ x + 1\noutput y = V @ h\n", S,
                             r"cannot add a constant to a vector", (8, 5)),
    "scaled-matrix": (HEAD + "h = (2 * W) @ x\noutput y = V @ h\n", S,
                      r"matrix param W can only be applied with @", (8, 6)),
    "matrix-as-output": (HEAD + "h = W @ x + b\noutput W\n", S,
                         r"'W' is a matrix param, not a vector", (9, 8)),
    "output-twice": (HEAD + "output y = V @ (W @ x + b)\noutput y\n", S,
                     r"marked as an output twice", (9, 8)),
    "dim-as-vector": (HEAD + "h = W @ x + n\noutput y = V @ h\n", S,
                      r"'n' is a dim, not a vector", (8, 13)),
    "vector-division": (HEAD + "h = (W @ x) / b\noutput y = V @ h\n", S,
                        r"only division by a number", (8, 5)),
    "dim-divided-by-zero": ("width n = 8\ndim h = n / 0\n", S, r"division of a dim by zero",
                            (2, 1)),
    "dim-not-integer": ("width n = 8\ndim a = 3\ndim h = a / 2\n", S,
                        r"dim h = 3/2 is not a positive integer", (3, 1)),
    "function-name-as-value": (HEAD + "relu = W @ x\noutput y = V @ relu\n", P,
                               r"syntax error|built-in function", None),
}


@pytest.mark.parametrize(("src", "cls", "pattern", "where"), CATALOGUE.values(), ids=CATALOGUE)
def test_catalogue(src, cls, pattern, where):
    with pytest.raises(tp.TensorProgError) as info:
        tp.parse(src, "bad.tp")
    err = info.value
    text = err.render()
    assert re.search(pattern, text), text
    if where is None:
        return
    assert isinstance(err, cls)
    line, col = where
    assert text.startswith(f"bad.tp:{line}:{col}: error: "), text
    first = text.split("\n\n")[0].splitlines()
    assert first[1].strip() == src.splitlines()[line - 1].strip()  # the source line
    assert first[2].strip().startswith("^")  # the caret line
    assert first[2].index("^") - 4 == col - 1  # under the right column
    assert first[-1].startswith("help: "), text


def test_a_matrix_tied_in_a_circle_is_a_positioned_engine_error():
    program = tp.parse("width n = 8\ndim d = 3\ninput x : [d]\nparam W : [n, d]\n"
                       "output y = W.T @ (W @ x)\n", "bad.tp")
    with pytest.raises(tp.EngineError, match="no single condition fixes the init and update of W"
                       ) as info:
        tp.derive(program)
    assert info.value.render().startswith("bad.tp:4:1: error: ")


def test_catalogue_is_large_enough():
    assert len(CATALOGUE) >= 20


def test_one_error_does_not_cascade():
    with pytest.raises(tp.SemanticError) as info:
        tp.parse(HEAD + "h = W @ xx\nz = relu(h)\noutput y = V @ z\n", "bad.tp")
    assert len(info.value.diagnostics) == 1


def test_unused_param_is_a_warning():
    with pytest.warns(tp.TensorProgWarning, match=r"param 'b' is never used"):
        tp.parse(HEAD + "output y = V @ (W @ x)\n", "warn.tp")


def test_param_reaching_no_output_is_a_warning():
    src = HEAD + "param U : [n, d]\nh = W @ x + b\ndead = U @ x\noutput y = V @ h\n"
    program = tp.parse(src, "dead.tp")
    with pytest.warns(tp.TensorProgWarning, match=r"'U' does not reach any output"):
        d = tp.derive(program, "adam")
    assert "U" not in d.abc


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return exit_.value.code, capsys.readouterr().err


def test_cli_prints_the_error_and_exits_2(capsys, tmp_path):
    path = tmp_path / "bad.tp"
    path.write_text(HEAD + "h = W @ b\noutput y = V @ h\n")
    code, err = _cli(capsys, "derive", str(path))
    assert code == 2
    assert f"{path}:8:5: error: shape mismatch" in err and "Traceback" not in err


def test_cli_missing_file(capsys, tmp_path):
    code, err = _cli(capsys, "derive", str(tmp_path / "nope.tp"))
    assert code == 2 and "cannot read" in err and "Traceback" not in err


def test_cli_engine_error_exits_2(capsys, tmp_path):
    path = tmp_path / "dot.tp"
    path.write_text("width n = 8\ndim d = 3\ninput x : [d]\nparam W : [n, d]\n"
                    "h = relu(W @ x)\noutput s = dot(h, h)\n")
    code, err = _cli(capsys, "derive", str(path))
    assert code == 2 and "s blows up at init" in err and "Traceback" not in err
