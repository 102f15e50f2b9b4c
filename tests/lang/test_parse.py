"""Hostile and unusual inputs to the front end: each ends in a positioned error that says what to
do (exit status 2 from the CLI) or in a correct program, never in a traceback; one error does not
cascade, and an unused param is a warning. Bad programs and their messages: test_error_catalogue."""

from __future__ import annotations

import time
from fractions import Fraction

import pytest
from conftest import parse_error, run_cli

import tensorprog as tp

HEAD = "width n = 8\ninput x : [n]\nparam W : [n, n]\n"  # 3 lines; the bad line below is line 4
SEQ = ("width n = 8\ndim V = 5\ndim t = 3\ndim dh = n / 2\ninput tok : tokens[t, V]\n"
       "param E : [n, V]\nparam Wq : [n, n]\nparam Wk : [n, n]\nscale tau\nh = E @ tok\n"
       "s = tau * dot(Wq @ h, Wk @ h, dh)\n")  # 11 lines; s holds attention logits
P, S = tp.ParseError, tp.SemanticError


def _cli(capsys, *argv):
    code, _, err = run_cli(capsys, *argv)
    return code, err


# --- deep expressions ---------------------------------------------------------------------------

def test_a_sum_of_5000_terms_is_one_lincomb():
    source = HEAD + "y = " + " + ".join(["x"] * 5000) + "\noutput z = W @ y\n"
    start = time.perf_counter()
    program = tp.parse(source)
    assert time.perf_counter() - start < 10  # about 1 s; quadratic merging took minutes
    assert program.body[0] == tp.ir.program.LinComb("y", ((5000, "x"),))


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
    err = parse_error(source, S)
    assert err.span.line == 4 and err.span.column == 5 + 5 * 600 + 4
    assert "undefined name 'q'" in str(err)


# --- line separators: the caret lands under the right column of the right line ------------------

SEPARATORS = ["\u2028", "\u2029", "\x85", "\x0b", "\x0c", "\r"]


@pytest.mark.parametrize("sep", SEPARATORS, ids=[hex(ord(s)) for s in SEPARATORS])
def test_a_separator_in_a_comment_keeps_the_line_count(sep):
    err = parse_error(HEAD + f"# a{sep}b\nh = W @ q\noutput y = h\n", S)
    lines = str(err).splitlines()
    assert lines[0].startswith("bad.tp:5:9: error: undefined name 'q'")
    assert lines[1] == "    h = W @ q" and lines[2] == "            ^"


@pytest.mark.parametrize("sep", SEPARATORS, ids=[hex(ord(s)) for s in SEPARATORS])
def test_a_separator_in_code(sep):
    source = HEAD + f"h = W @ x{sep}+ q\noutput y = h\n"
    if sep == "\x0c":  # form feed is whitespace: the error is the undefined name after it
        err = parse_error(source, S)
        where, what = (4, 13), "undefined name 'q'"
    else:
        err = parse_error(source, P)
        where, what = (4, 10), f"unexpected {sep!r}"
    rendered = str(err).splitlines()
    assert (err.span.line, err.span.column) == where and what in rendered[0]
    assert len(rendered[1]) == len("    h = W @ x + q")  # the separator prints as one space
    assert rendered[2] == " " * (3 + where[1]) + "^"


def test_a_tab_and_a_wide_character_keep_the_caret_aligned():
    err = parse_error(HEAD + "#\u6f22\nh =\tW @ q\noutput y = h\n", S)
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


# --- what the rules accept, and numbers kept exact ------------------------------------------------


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


def test_a_dim_of_a_fraction_of_the_width_parses_and_prints_back():
    # MobileNet v2's channel counts are 3/16, 5/16 ... of its width: k * n / m, one declaration
    from tensorprog.ir.text import to_text

    source = "width n = 64\ndim k = 3 * n / 16\ninput x : [n]\nparam W : [k, n]\n" \
             "param V : [n, k]\noutput y = V @ relu(W @ x)\n"
    program = tp.parse(source)
    assert program.dim_table["k"].mult == Fraction(3, 16)
    assert program.dim_table["k"].size_at(128) == 24
    assert "dim k = 3 * n / 16" in to_text(program)
    assert tp.parse(to_text(program)) == program
    with pytest.raises(S, match=r"dim k = 3/16 x 8 is not a whole number at the base width"):
        tp.parse(source.replace("n = 64", "n = 8"))
    with pytest.raises(S, match="division of a dim by zero"):
        tp.parse(source.replace("/ 16", "/ 0"))


def test_a_param_of_a_negative_constant_init_parses_and_prints_back():
    # a gate's bias below 0 (the tracer writes a one-entry param's init as it finds it)
    from tensorprog.ir.text import to_text

    program = tp.parse(HEAD + "param b : [n] = -0.25\nparam c : [n] = -2\n"
                       "output y = W @ (x + b + c)\n")
    assert (program.param_table["b"].base, program.param_table["c"].base) == (
        Fraction(-1, 4), Fraction(-2))
    assert "param b : [n] = -0.25" in to_text(program)
    assert tp.parse(to_text(program)) == program
    # a param of one entry is one number for every coordinate (no heads of 1 needed)
    one = tp.parse(HEAD + "dim f1 = 1\nparam a : [f1] = -0.5\noutput y = W @ (x + a * x)\n")
    assert one.param_table["a"].base == Fraction(-1, 2)
    with pytest.raises(P):  # the sign is the init's: not an expression
        tp.parse(HEAD + "param b : [n] = - -1\noutput y = W @ (x + b)\n")


# --- errors collected, warnings -------------------------------------------------------------------


DECLS = ("width n = 8\ndim d = 3\ndim k = 2\ninput x : [d]\nparam W : [n, d]\nparam V : [k, n]\n"
         "param b : [n]\n")  # 7 lines; the bad line below is line 8


def test_one_error_does_not_cascade():
    with pytest.raises(tp.SemanticError) as info:
        tp.parse(DECLS + "h = W @ xx\nz = relu(h)\noutput y = V @ z\n", "bad.tp")
    assert len(info.value.diagnostics) == 1


def test_unused_param_is_a_warning():
    with pytest.warns(tp.TensorProgWarning, match=r"param 'b' is never used"):
        tp.parse(DECLS + "output y = V @ (W @ x)\n", "warn.tp")
