"""Token ids with the entries a condition of theirs picks set to one id before the lookup
(Granite Speech's audio placeholders: ``ids[ids == audio] = 0``, or ``where(ids == audio, 0,
ids)``) are still the token ids. Before, the walk computed them from the zeros the trace puts in
the ids' place, one constant id, and traced the token embedding as a bias (one row of the
table): derive then refused the attention ("the program has no sequence"), and a model without
attention would have been given a bias's µP for its embedding."""

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from tensorprog.fromtorch import from_torch  # noqa: E402


class Placeholders(nn.Module):
    def __init__(self, n, form):
        super().__init__()
        self.e, self.o, self.form = nn.Embedding(16, n), nn.Linear(n, 16), form

    def forward(self, ids):
        if self.form == "index_put":
            x = ids.clone()
            x[ids == 15] = 0
        else:
            x = torch.where(ids == 15, 0, ids)
        return self.o(torch.relu(self.e(x)))


@pytest.mark.parametrize("form", ["index_put", "where"])
def test_ids_with_placeholders_replaced_are_the_token_ids(form):
    traced = from_torch(lambda n: Placeholders(n, form), (16, 32),
                        lambda m: (torch.zeros(2, 4, dtype=torch.long),))
    assert "input tok : tokens[T, V]" in traced.source
    assert "embedding = e_weight @ tok" in traced.source and "row0" not in traced.source
