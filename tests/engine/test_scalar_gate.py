"""A per-token scalar times a vector (``sigmoid(dot(a, h)) * (W2 @ h)``: one gate for all of a
token's coordinates): the scalar's gradient sums the product's n coordinates, d(z)ᵢ(W2 h)ᵢ,
Θ(1) once trained (LLN: +1), not one coordinate's Θ(1/n). Under SGD the gate's vector ``a``
then needs the readout's LR 1/n: at Θ(1), one step moves dot(a, h) by Θ(n·(1/n)·n)."""

import tensorprog as tp

GATE = """width n = 64
dim d_in = 16
dim d_out = 10
input x : [d_in]
param W1 : [n, d_in]
param W2 : [n, n]
param a : [n]
param Wo : [d_out, n]
h = relu(W1 @ x)
s = sigmoid(dot(a, h))
output y = Wo @ (s * (W2 @ h))
"""


def test_a_scalar_gates_gradient_sums_the_vectors_coordinates():
    for optimizer in ("sgd", "adam"):
        abc = tp.derive(tp.parse(GATE), optimizer).abc
        assert (abc["a"].b, abc["a"].c) == (1, 1), optimizer  # as a readout's (dot(a, h))
