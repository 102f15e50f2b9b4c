"""A per-pair attention bias computed from params over a window's constant offsets (Swin V2's
continuous position bias, `at(16 * sigmoid(V @ relu(U @ c + u)), win)`), derived layer by layer
for the two ways its heads may scale.

- heads of a fixed dim (n/16 of them): head h's logits reach the output as one head of n/16, so
  the bias's gradient dr_h is Θ(1/n); V [heads, P] has a finite fan-in P into growing heads, an
  input weight (init Θ(1), Adam LR Θ(1), SGD LR n: its row h's gradient is dr_h ⊗ h); back to
  the hidden h comes Vᵀ dr, a sum over the n/16 heads, correlated after training (LLN: n·1/n),
  so U and u (finite x finite, and a bias of a finite dim) take Θ(1) steps under both;
- a fixed number of heads (4, of a growing dim): every head is a finite fraction of the output,
  dr_h is Θ(1), and U, u and V are all finite x finite: Θ(1) inits and LRs under both.
"""

from __future__ import annotations

import pytest

import tensorprog as tp

PROGRAM = """\
width n = 64
dim T = 64
dim D = 12
dim B = 49
dim E = 2
dim P = 512
dim G = 8
dim dh = {dh}
dim H = {heads}
dim K = 10
scale tau = 0.0625
input x : patches[T, D]
input c : offsets[B, E]
input w : windows[T, B, G, G, 2]
param Win : [n, D]
param U : [P, E]
param u : [P]
param V : [H, P]
param Wq : [n, n]
param Wk : [n, n]
param Wv : [n, n]
param Wo : [n, n]
param Wc : [K, n]
h = Win @ x
r = 16 * sigmoid(V @ relu(U @ c + u))
s = tau * dot(Wq @ h, Wk @ h, dh) + at(r, w)
output y = Wc @ mean(h + Wo @ mix(softmax(s), Wv @ h))
"""

ZERO = (0, 0, 0)


@pytest.mark.parametrize(("dh", "heads", "sgd_v"), [
    ("16", "n / 16", (0, 0, -1)),  # heads of 16, n/16 of them: V an input weight, SGD LR n
    ("n / 4", "4", ZERO),  # 4 heads: V finite x finite
])
def test_the_bias_mlp_derives_from_how_its_heads_scale(dh, heads, sgd_v):
    program = tp.parse(PROGRAM.format(dh=dh, heads=heads), "cpb.tp")
    for optimizer, v in (("adam", ZERO), ("sgd", sgd_v)):
        abc = tp.derive(program, optimizer).abc
        got = {p: (abc[p].a, abc[p].b, abc[p].c) for p in ("U", "u", "V")}
        assert got == {"U": ZERO, "u": ZERO, "V": v}, optimizer
