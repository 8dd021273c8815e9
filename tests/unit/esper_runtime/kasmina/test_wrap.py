import pytest
import torch
from torch import nn

from esper_runtime.kasmina import KasminaConfig, KasminaLayer, wrap
from esper_runtime.kasmina.exceptions import ConfigError

from .conftest import mlp


class SmallCNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1))
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        return self.head(self.features(x).mean(dim=(2, 3)))


def test_wrap_keeps_the_original_modules_as_base_layer():
    host = SmallCNN()
    originals = {name: m for name, m in host.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    model = wrap(host)
    layers = {l.path: l for l in model.seed_layers()}
    assert set(layers) == set(originals)
    for path, layer in layers.items():
        assert isinstance(layer, KasminaLayer) and layer.base_layer is originals[path]
    assert isinstance(model.host.features[0], KasminaLayer)


def test_dormant_model_computes_exactly_what_the_host_computes():
    reference = SmallCNN()
    host = SmallCNN()
    host.load_state_dict(reference.state_dict())
    model = wrap(host, KasminaConfig(stats_every=1))
    x = torch.randn(4, 3, 8, 8)
    model.train()
    assert torch.equal(model(x), reference(x))
    model.eval()
    assert torch.equal(model(x), reference(x))


def test_selection_by_type_and_path_patterns():
    model = wrap(mlp(), KasminaConfig(target_types=["Linear"], include=["*"], exclude=["4"]))
    assert [l.path for l in model.seed_layers()] == ["0", "2"]
    model = wrap(SmallCNN(), KasminaConfig(target_types=["Conv2d"], include=["features.*"]))
    assert [l.path for l in model.seed_layers()] == ["features.0", "features.2"]
    with pytest.raises(ConfigError, match="no module matches"):
        wrap(mlp(), KasminaConfig(include=["nothing.here"]))


def test_a_wrapped_model_cannot_be_wrapped_again():
    model = wrap(mlp())
    with pytest.raises(ConfigError, match="already wrapped"):
        wrap(model)


def test_chunks_cover_every_output_feature_once():
    model = wrap(mlp(), KasminaConfig(seeds_per_layer=5))
    for layer in model.seed_layers():
        covered = [f for s, e in layer.bounds for f in range(s, e)]
        assert covered == list(range(layer.features))
        assert layer.num_seeds == len(layer.bounds) == layer.lifecycle_state.numel()


def test_state_dict_round_trips_into_a_fresh_wrap():
    a = wrap(mlp(), KasminaConfig())
    a.seed_layers()[1].lifecycle_state[2] = 9  # anything non-default must travel
    b = wrap(mlp(), KasminaConfig())
    b.load_state_dict(a.state_dict())
    for key, value in a.state_dict().items():
        assert torch.equal(value, b.state_dict()[key]), key
    assert b.seed_layers()[1]._codes[2] == 9  # the forward's mirror follows the loaded buffers


def test_dtype_and_device_are_kept():
    model = wrap(mlp().double())
    x = torch.randn(5, 6, dtype=torch.float64)
    assert model(x).dtype == torch.float64
    for layer in model.seed_layers():
        assert layer.base_layer.weight.dtype == torch.float64
    model = model.float()
    assert model(x.float()).dtype == torch.float32


def test_kasmina_is_not_a_submodule():
    model = wrap(mlp())
    assert all("kasmina" not in k for k in model.state_dict())
    assert isinstance(model, nn.Module)
