"""A layer whose last chunk is shorter takes its statistics for all chunks at once; they must be what the chunk-by-
chunk formulas give (``_chunk_stats`` on each chunk, and each chunk's own first probe units for the growth signal)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_runtime.kasmina import KasminaConfig
from esper_runtime.kasmina.layer import _PROBE_UNITS, KasminaLayer, _chunk_stats


@pytest.mark.parametrize("features,chunk", [(10, 3), (37, 8), (5, 4), (9, 1)])
def test_ragged_chunk_statistics_equal_the_chunk_by_chunk_ones(features, chunk):
    layer = KasminaLayer(nn.Linear(6, features), 0, "l", KasminaConfig(chunk_size=chunk))
    gen = torch.Generator().manual_seed(features)
    rows = torch.relu(torch.randn(200, features, generator=gen) + 0.3 * torch.randn(200, 1, generator=gen))
    rows[:, 0] = -1.0  # a dead unit
    for corr_rows in (0, 64):
        want = torch.cat([_chunk_stats(rows[:, s:e].unsqueeze(1), corr_rows) for s, e in layer.bounds])
        torch.testing.assert_close(layer._ragged_stats(rows, corr_rows), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("features,chunk,probe_units", [(10, 3, 64), (37, 8, 6), (21, 10, 64)])
def test_ragged_growth_sums_equal_each_chunks_own_units(features, chunk, probe_units):
    layer = KasminaLayer(nn.Linear(6, features), 0, "l", KasminaConfig(chunk_size=chunk, probe_units=probe_units))
    available = min(_PROBE_UNITS * chunk, probe_units)
    c = torch.rand(available, features, generator=torch.Generator().manual_seed(1))
    want = torch.stack([c[:u, s:e].sum() * (_PROBE_UNITS * (e - s) / u)
                        for s, e, u in layer._probe_units(available)]).sqrt()
    got = layer._per_seed((c * layer._ragged_weights(available, c.device)).sum(0)).sqrt()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
