"""A wrapped model training with its seeds publishing to the real broker: the log tells the lifecycle."""

import pytest
import torch
from torch import nn

import esper_runtime
from esper_runtime.kasmina import reference_artifact
from esper_runtime.kasmina.kernels import REFERENCE_KIND
from esper_runtime.urza import ArtifactStore
from streams import KafkaPublisher, SingleObjectSerde
from streams.replay import KafkaSource, ReplayReader

pytestmark = pytest.mark.integration


def test_seed_lifecycle_and_telemetry_reach_the_broker_in_order(topic_registry, kafka_bootstrap, catalog, tmp_path):
    registry = topic_registry()
    store = ArtifactStore(tmp_path)
    aid, data = reference_artifact("residual_mlp", 8)
    store.put(aid, REFERENCE_KIND, data)
    serde = SingleObjectSerde(catalog)
    pub = KafkaPublisher(kafka_bootstrap, serde, registry)
    torch.manual_seed(0)
    host = nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))
    cfg = esper_runtime.KasminaConfig(reconstruction_steps=3, graft_steps=3, stabilize_steps=2, evaluate_steps=2,
                                      stats_every=1)
    model = esper_runtime.wrap(host, cfg, artifacts=store, publisher=pub, run_id="run-kafka")
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x, y = torch.randn(64, 4), torch.randn(64, 2)
    commands = ["request_germination", "promote", "advance", "advance", "advance", "advance", "fossilize"]
    for epoch, cmd in enumerate(commands, start=1):
        model.kasmina.command(0, 1, cmd, aid)
        if model.kasmina.end_epoch(epoch).params_changed:
            opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
        for _ in range(5):
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    pub.flush()
    src = KafkaSource(kafka_bootstrap)
    events = [e.decoded.typed() for e in ReplayReader(src, serde).events([registry.prefix + "kasmina.lifecycle.transitions"])]
    telemetry = list(ReplayReader(src, serde).events([registry.prefix + "kasmina.telemetry.seeds"]))
    src.close()
    assert [e.to_state.value for e in events] == ["GERMINATED", "LOADING", "TRAINING", "GRAFTING", "STABILIZATION",
                                                 "EVALUATING", "FINE_TUNING", "FOSSILIZED"]
    assert [e.envelope.originator_version for e in events] == list(range(1, 9))
    assert all(e.envelope.run_id == "run-kafka" and e.kernel_artifact_id == aid for e in events)
    assert len(telemetry) == len(commands) * 2  # one batch per layer per epoch
