"""A layer takes its statistics for all chunks at once, whatever their widths; they must be what the chunk-by-chunk
formulas give (``chunk_stats`` below on each chunk, and each chunk's own first probe units for the growth signal)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from esper_runtime.kasmina import KasminaConfig
from esper_runtime.kasmina.layer import _PROBE_UNITS, KasminaLayer


def chunk_stats(x: torch.Tensor, corr_rows: int) -> torch.Tensor:
    """The definition, one chunk at a time: (rows, c) -> (3,) mean unit variance (unbiased), dead-unit ratio (never
    above 0), mean |correlation| between distinct units over the first ``corr_rows`` rows (0 without them)."""
    var = x.var(dim=0).mean()
    dead = (x.amax(dim=0) <= 0).float().mean()
    c = x.shape[1]
    if not corr_rows or c == 1:
        return torch.stack([var, dead, torch.zeros(())])
    corr = torch.corrcoef(x[:corr_rows].t()).nan_to_num(0.0).abs()
    return torch.stack([var, dead, (corr.sum() - corr.diagonal().sum()) / (c * (c - 1))])


@pytest.mark.parametrize("features,chunk", [(10, 3), (37, 8), (5, 4), (9, 1), (16, 4), (512, 128), (6, 1)])
def test_chunk_statistics_equal_the_chunk_by_chunk_ones(features, chunk):
    layer = KasminaLayer(nn.Linear(6, features), 0, "l", KasminaConfig(chunk_size=chunk))
    assert (layer.uniform_chunk is None) == (features % chunk != 0)
    gen = torch.Generator().manual_seed(features)
    rows = torch.relu(torch.randn(200, features, generator=gen) + 0.3 * torch.randn(200, 1, generator=gen))
    rows[:, 0] = -1.0  # a dead unit
    for corr_rows in (0, 64):
        want = torch.stack([chunk_stats(rows[:, s:e], corr_rows) for s, e in layer.bounds])
        got = layer._chunk_means(rows)
        corr = layer._correlation(rows[:corr_rows]) if corr_rows else torch.zeros(layer.num_seeds)
        torch.testing.assert_close(torch.cat([got, corr.unsqueeze(1)], dim=1), want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("features,chunk,probe_units", [(10, 3, 64), (37, 8, 6), (21, 10, 64)])
def test_ragged_growth_sums_equal_each_chunks_own_units(features, chunk, probe_units):
    layer = KasminaLayer(nn.Linear(6, features), 0, "l", KasminaConfig(chunk_size=chunk, probe_units=probe_units))
    available = min(_PROBE_UNITS * chunk, probe_units)
    c = torch.rand(available, features, generator=torch.Generator().manual_seed(1))
    want = torch.stack([c[:u, s:e].sum() * (_PROBE_UNITS * (e - s) / u)
                        for s, e, u in layer._probe_units(available)]).sqrt()
    got = layer._per_seed((c * layer._ragged_weights(available, c.device)).sum(0)).sqrt()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("wider", [False, True])
def test_growth_signals_in_python_numbers_equal_the_tensor_formula(wider):
    """The signals come from the accumulator read once into Python numbers; they must be, bit for bit, the float64
    tensor arithmetic they replaced (spread x the model's or the layer's gradient norm)."""
    from esper_runtime.kasmina.layer import ModelInput
    from esper_runtime.kasmina.state import HEALTH

    layer = KasminaLayer(nn.Linear(6, 40), 0, "l", KasminaConfig(chunk_size=8))
    layer.model_input = ModelInput()
    layer.model_input.features = 9 if wider else 6
    acc = torch.rand(layer.num_seeds, len(HEALTH), generator=torch.Generator().manual_seed(2)) * 7
    acc[0, HEALTH["samples"]] = 0  # never sampled
    acc[1, HEALTH["growth_model"]] = 0  # no model signal
    acc[2, HEALTH["variance"]] = -1e-9  # rounding below zero
    layer.health_accumulator.copy_(acc)
    a = acc.to(torch.float64)
    n, grow_n = a[:, HEALTH["samples"]].clamp_min(1.0), a[:, HEALTH["growth_samples"]].clamp_min(1.0)
    spread = (a[:, HEALTH["variance"]] / n).clamp_min(0).sqrt()
    model = a[:, HEALTH["growth_model"]] / grow_n
    from_model = (model > 0) & wider
    want = (spread * torch.where(from_model, model, a[:, HEALTH["growth_layer"]] / grow_n)).to(torch.float32)
    signal, got_from_model = layer.growth_signals()
    assert torch.equal(signal, want) and torch.equal(got_from_model, from_model)
    assert [h["growth_signal"] for h in layer.health()] == want.tolist()
