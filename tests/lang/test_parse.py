"""Hostile and unusual inputs to the front end: each ends in a positioned error that says what to
do (exit status 2 from the CLI) or in a correct program, never in a traceback."""

from __future__ import annotations

import re
import time
import warnings

import pytest

import tensorprog as tp
from tensorprog.cli.main import main

HEAD = "width n = 8\ninput x : [n]\nparam W : [n, n]\n"  # 3 lines; the bad line below is line 4
SEQ = ("width n = 8\ndim V = 5\ndim t = 3\ndim dh = n / 2\ninput tok : tokens[t, V]\n"
       "param E : [n, V]\nparam Wq : [n, n]\nparam Wk : [n, n]\nscale tau\nh = E @ tok\n"
       "s = tau * dot(Wq @ h, Wk @ h, dh)\n")  # 11 lines; s holds attention logits
P, S = tp.ParseError, tp.SemanticError


def _cli(capsys, *argv):
    with pytest.raises(SystemExit) as exit_:
        main(list(argv))
    return exit_.value.code, capsys.readouterr().err


def _error(source: str, cls=tp.TensorProgError) -> tp.TensorProgError:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", tp.TensorProgWarning)
        with pytest.raises(cls) as info:
            tp.parse(source, "bad.tp")
    return info.value


# --- deep expressions ---------------------------------------------------------------------------

def test_a_sum_of_5000_terms_is_one_lincomb():
    source = HEAD + "y = " + " + ".join(["x"] * 5000) + "\noutput z = W @ y\n"
    start = time.perf_counter()
    program = tp.parse(source)
    assert time.perf_counter() - start < 10  # about 1 s; quadratic merging took minutes
    assert program.body[0] == tp.ir.LinComb("y", ((5000, "x"),))


def test_a_sum_of_1000_distinct_terms_keeps_their_order():
    names = [f"x{i}" for i in range(1000)]
    source = ("width n = 8\n" + "".join(f"input {v} : [n]\n" for v in names)
              + "param W : [n, n]\ny = " + " - ".join(names) + "\noutput z = W @ y\n")
    lincomb = tp.parse(source).body[0]
    assert [v for _, v in lincomb.terms] == names
    assert [c for c, _ in lincomb.terms] == [1] + [-1] * 999


def test_1000_nested_calls_lower_to_a_chain():
    source = HEAD + "y = " + "relu(" * 1000 + "W @ x" + ")" * 1000 + "\noutput y\n"
    program = tp.parse(source)
    assert len(program.body) == 1001
    assert program.body[-1].out == "y" and program.body[-1].args == ("y_1000",)


def test_an_error_deep_inside_a_nested_expression_is_positioned():
    source = HEAD + "y = " + "tanh(" * 600 + "W @ q" + ")" * 600 + "\noutput y\n"
    err = _error(source, S)
    assert err.span.line == 4 and err.span.column == 5 + 5 * 600 + 4
    assert "undefined name 'q'" in str(err)


# --- line separators: the caret lands under the right column of the right line ------------------

SEPARATORS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\r"]


@pytest.mark.parametrize("sep", SEPARATORS, ids=[hex(ord(s)) for s in SEPARATORS])
def test_a_separator_in_a_comment_keeps_the_line_count(sep):
    err = _error(HEAD + f"# a{sep}b\nh = W @ q\noutput y = h\n", S)
    lines = str(err).splitlines()
    assert lines[0].startswith("bad.tp:5:9: error: undefined name 'q'")
    assert lines[1] == "    h = W @ q" and lines[2] == "            ^"


@pytest.mark.parametrize("sep", SEPARATORS, ids=[hex(ord(s)) for s in SEPARATORS])
def test_a_separator_in_code(sep):
    source = HEAD + f"h = W @ x{sep}+ q\noutput y = h\n"
    if sep == "\x0c":  # form feed is whitespace: the error is the undefined name after it
        err = _error(source, S)
        where, what = (4, 13), "undefined name 'q'"
    else:
        err = _error(source, P)
        where, what = (4, 10), f"unexpected {sep!r}"
    rendered = str(err).splitlines()
    assert (err.span.line, err.span.column) == where and what in rendered[0]
    assert len(rendered[1]) == len("    h = W @ x + q")  # the separator prints as one space
    assert rendered[2] == " " * (3 + where[1]) + "^"


def test_a_tab_and_a_wide_character_keep_the_caret_aligned():
    err = _error(HEAD + "#\u6f22\nh =\tW @ q\noutput y = h\n", S)
    assert str(err).splitlines()[2] == "    " + "   \t" + "    ^"


# --- files --------------------------------------------------------------------------------------

def test_a_file_not_in_utf8_names_the_file_line_and_column(tmp_path, capsys):
    path = tmp_path / "latin1.tp"
    path.write_bytes(b"width n = 8\n# caf\xe9\ninput x : [n]\n")
    with pytest.raises(P, match=r"latin1.tp:2:6: error: the file is not UTF-8 text: byte 0xe9"):
        tp.parse_file(path)
    code, err = _cli(capsys, "derive", str(path))
    assert code == 2 and "save the program as UTF-8" in err


def test_a_utf8_file_with_a_byte_order_mark_and_crlf_parses(tmp_path):
    path = tmp_path / "bom.tp"
    path.write_bytes(b"\xef\xbb\xbf" + (HEAD + "output y = W @ x\n").replace("\n", "\r\n").encode())
    assert tp.parse_file(path) == tp.parse(HEAD + "output y = W @ x\n")


# --- the catalogue: (program, error class, message regex, (line, column)) ------------------------

CATALOGUE = {
    # syntax mistakes whose help says what to do
    "shape-arithmetic": ("width n = 8\ninput x : [4 * n, n]\n", P,
                         r"unexpected '4'(.|\n)*declare the size first, e\.g\. `dim m = 4 \* n`, "
                         r"then write `\[m, n\]`", (2, 12)),
    "shape-arithmetic-right": ("width n = 8\ninput x : [n * 4]\n", P, r"`dim m = 4 \* n`",
                               (2, 14)),
    "dim-square": (HEAD + "dim m = n * n\n", P, r"unexpected 'n'(.|\n)*not n \* n", (4, 13)),
    "dim-fraction": (HEAD + "dim m = 0.5 * n\n", P, r"`dim m = n / 2`", (4, 10)),  # 0 .5
    "dim-negative": (HEAD + "dim m = -3\n", P, r"positive whole number", (4, 9)),
    "width-no-base": ("width n\ninput x : [n]\n", P, r"expected '='\. Give the width its base "
                      r"value(.|\n)*`width n = 256`", (1, 8)),
    "width-not-whole": ("width n = 256.0\n", P, r"a positive whole number: `width n = 256`",
                        (1, 14)),  # 256 .0
    "juxtaposed": (HEAD + "output y = W x\n", P, r"unexpected 'x'(.|\n)*put an operator between "
                   r"them, `W @ x`", (4, 14)),
    "power": (HEAD + "output y = x ** 2\n", P, r"no power operator", (4, 15)),
    "lower-t": (HEAD + "output y = W.t @ x\n", P, r"written `W\.T`", (4, 13)),
    "trailing-operator": (HEAD + "output y = W @\n", P, r"The expression ends early", (4, 15)),
    # sizes
    "dim-zero-multiple": (HEAD + "dim z = 0 * n\n", S, r"dim z = 0 x n has no coordinates(.|\n)*"
                          r"`dim z = 4 \* n`", (4, 1)),
    "dim-zero": (HEAD + "dim z = 0\n", S, r"dim z must be positive", (4, 1)),
    "dim-divided-by-zero": (HEAD + "dim z = n / 0\n", S, r"division of a dim by zero", (4, 1)),
    "finite-dim-zero-multiple": (HEAD + "dim d = 3\ndim z = 0 * d\n", S, r"0 x d", (5, 1)),
    "width-zero": ("width n = 0\n", S, r"the base width must be positive(.|\n)*`width n = 256`"
                   r"(?!(.|\n)*declares no width)", (1, 1)),
    # numbers past what a float holds
    "coefficient-too-large": (HEAD + "output y = 1e400 * (W @ x)\n", P,
                              r"the number 1e400 is out of range(.|\n)*between 2\.23e-308 and "
                              r"1\.8e\+308", (4, 12)),
    "coefficient-too-small": (HEAD + "output y = 1e-400 * (W @ x)\n", P, r"1e-400 is out of range",
                              (4, 12)),
    "huge-exponent": (HEAD + "output y = 1e99999999999 * (W @ x)\n", P, r"out of range",
                      (4, 12)),
    "many-digits": (HEAD + "output y = " + "1" * 5000 + " * (W @ x)\n", P,
                    r"the number 111111111111\.\.\.11111111 \(5000 characters\) is out of range",
                    (4, 12)),
    "many-digits-in-range": (HEAD + "output y = " + "1" * 4400 + "e-4390 * (W @ x)\n", P,
                             r"has too many digits", (4, 12)),
    "init-too-large": (HEAD + "param g : [n] = 1e999\noutput y = g * (W @ x)\n", P,
                       r"1e999 is out of range", (4, 17)),
    "scale-too-large": (HEAD + "scale s = 1e999\noutput y = s * (W @ x)\n", P, r"out of range",
                        (4, 11)),
    "folded-coefficient": (HEAD + "output y = 1e200 * 1e200 * (W @ x) + x\n", S,
                           r"a coefficient here, about 1e400, is out of range", (4, 1)),
    "width-too-large": ("width n = 99999999999999999999999\n", P,
                        r"the size 99999999999999999999999 is too large(.|\n)*2\*\*53", (1, 11)),
    "dim-too-large": (HEAD + "dim d = 10000000000000000000000000\n", P, r"too large", (4, 9)),
    "dim-multiple-too-large": (HEAD + "dim z = 9007199254740992 * n\n", S,
                               r"dim z = 9007199254740992 x 8 is too large", (4, 1)),
    "derived-dim-too-large": (HEAD + "dim d = 9007199254740992\ndim z = 2 * d\n", S,
                              r"dim z = 18014398509481984 is too large", (5, 1)),
    "times-zero": (HEAD + "y = 0 * (W @ x)\noutput z = W @ y\n", S,
                   r"multiplying by 0 gives a zero vector", (4, 5)),
    # functions whose rule does not describe what the module computes
    "softmax-of-width": (HEAD + "output y = softmax(W @ x)\n", S,
                         r"softmax over the width-proportional dim n makes every entry Θ\(1/n\)"
                         r"(.|\n)*attention logits over key tokens", (4, 12)),
    "softmax-of-scalar": (HEAD + "output y = softmax(dot(x, W @ x))\n", S,
                          r"softmax of a scalar", (4, 12)),
    "softmax-of-one": (HEAD + "dim one = 1\nparam R : [one, n]\noutput y = softmax(R @ x)\n", S,
                       r"single entry of one is the constant 1", (6, 12)),
    "causal-softmax-of-vector": (HEAD + "dim c = 10\nparam R : [c, n]\n"
                                 "output y = causal_softmax(R @ x)\n", S,
                                 r"causal_softmax masks future key tokens(.|\n)*not a vector \[c\]",
                                 (6, 12)),
    "layernorm-of-scalar": (HEAD + "output y = layernorm(dot(x, W @ x))\n", S,
                            r"layernorm of a scalar would normalise over the batch", (4, 12)),
    "rmsnorm-of-logits": (SEQ + "output y = rmsnorm(s)\n", S,
                          r"rmsnorm of attention logits would normalise over key tokens",
                          (12, 12)),
    "layernorm-of-one": (HEAD + "dim one = 1\nparam R : [one, n]\n"
                         "output y = layernorm(R @ x)\n", S, r"single coordinate of one is 0",
                         (6, 12)),
    "global-pool-of-vector": (HEAD + "output y = global_pool(W @ x)\n", S,
                              r"global_pool needs an image", (4, 12)),
    "dot-of-logits": (SEQ + "output y = dot(s, s)\n", S,
                      r"dot contracts a vector's dim, but attention logits", (12, 12)),
    "head-dot-of-logits": (SEQ + "output y = dot(s, s, dh)\n", S,
                           r"dot contracts a vector's dim, but attention logits", (12, 12)),
    "logits-plus-vector": (SEQ.replace("dim dh = n / 2", "dim dh = 2\ndim m = n / 2")
                           + "param u : [m]\noutput y = s + u\n", S,
                           r"shape mismatch in '\+': \[n/dh\] and \[m\]", (14, 12)),
    # names
    "function-as-name": (HEAD + "relu = W @ x\noutput relu\n", S,
                         r"'relu' is a built-in function and cannot name a value", (4, 1)),
    "width-as-value": (HEAD + "n = W @ x\noutput n\n", S, r"'n' is already defined \(line 1\)",
                       (4, 1)),
    # a head dot without a width used to crash looking up the base width
    "head-dot-without-width": ("dim V = 5\ndim t = 3\ndim d = 8\ndim dh = 4\n"
                               "input tok : tokens[t, V]\nparam E : [d, V]\nh = E @ tok\n"
                               "output y = dot(h, h, dh)\n", S, r"declares no width", (8, 1)),
}


@pytest.mark.parametrize("case", list(CATALOGUE))
def test_catalogue(case):
    source, cls, pattern, (line, column) = CATALOGUE[case]
    err = _error(source, cls)
    assert re.search(pattern, str(err)), str(err)
    assert (err.span.line, err.span.column) == (line, column), str(err)
    assert "Traceback" not in str(err)


@pytest.mark.parametrize("case", ["shape-arithmetic", "softmax-of-width", "width-too-large"])
def test_the_cli_exits_2(case, tmp_path, capsys):
    path = tmp_path / "bad.tp"
    path.write_text(CATALOGUE[case][0])
    code, err = _cli(capsys, "derive", str(path))
    assert code == 2 and "help:" in err and "Traceback" not in err


def test_softmax_and_norms_where_their_rules_hold_are_accepted():
    tp.parse(SEQ + "output y = mix(softmax(s), Wq @ h)\n")
    tp.parse(SEQ + "output y = mix(causal_softmax(s), Wq @ h)\n")
    for fn in ("softmax", "layernorm", "rmsnorm"):
        tp.parse(HEAD + f"dim c = 10\nparam R : [c, n]\noutput y = {fn}(R @ relu(W @ x))\n")
    tp.parse(HEAD + "output y = layernorm(W @ x)\n")


def test_numbers_at_the_edge_of_the_range_are_exact():
    program = tp.parse(HEAD + "output y = 1e300 * (W @ x) + 0.1 * x\n")
    assert program.body[-1].terms[0][0] == 10**300
    assert program.body[-1].terms[1][0] * 10 == 1
