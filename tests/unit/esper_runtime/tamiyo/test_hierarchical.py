"""Hierarchical control: domains from appendix I.2's YAML shape, Tamiyo-Prime's attention and ATP allocation,
sub-Tamiyos that never spend beyond their balance, on a model with three domains."""

import pytest
import torch
import yaml
from torch import nn

from esper_runtime.config import EsperConfig
from esper_runtime.kasmina import wrap
from esper_runtime.tamiyo.hierarchical import DomainError, HierarchicalTamiyo, allocate, domains_of
from esper_runtime.tolaria import TolariaTrainer
from streams.replay import MemorySource, ReplayReader

from ..helpers import spirals_small

CONFIG = yaml.safe_load("""
kasmina: {chunk_size: 8, exclude: ["6"], stats_every: 1, reconstruction_steps: 3, graft_steps: 4,
          stabilize_steps: 2, evaluate_steps: 2, embargo_epochs: 2}
tamiyo: {warmup_epochs: 1, patience: 1, min_delta: 0.5, max_germinations: 6, fine_tune_epochs: 1,
         accept_tolerance: 1.0, min_improvement: -1.0}
tolaria: {epochs: 20, lr: 0.003, batch_size: 128}
hierarchical_control:
  enabled: true
  tamiyo_prime:
    attention_window: 64
    atp_global_budget: 12
    germination_cost: 10
  domains:
    input_layer:
      module_paths: ["0"]
      atp_initial_budget: 0
    hidden_layer:
      module_paths: ["2"]
      atp_initial_budget: 10
    late_layer:
      module_paths: ["4"]
      atp_initial_budget: 0
""")


def deep_host(width=16, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(2, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
                         nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 2))


def test_allocation_is_an_exact_integer_split():
    assert allocate({"a": 0.5, "b": 0.3, "c": 0.2}, 50) == {"a": 25, "b": 15, "c": 10}
    split = allocate({"a": 1 / 3, "b": 1 / 3, "c": 1 / 3}, 10)
    assert sum(split.values()) == 10 and max(split.values()) - min(split.values()) <= 1


def test_domains_must_match_seed_layers():
    config = EsperConfig.model_validate(CONFIG)
    model = wrap(deep_host(), config.kasmina)
    assert domains_of(model, config.hierarchical_control) == {"input_layer": [0], "hidden_layer": [1],
                                                              "late_layer": [2]}
    bad = config.hierarchical_control.model_copy(deep=True)
    bad.domains["late_layer"].module_paths = ["9"]
    with pytest.raises(DomainError, match="no seed layer"):
        domains_of(model, bad)


def test_three_domains_grow_within_their_budgets(library, publisher):
    store, view = library
    config = EsperConfig.model_validate(CONFIG)
    model = wrap(deep_host(), config.kasmina, artifacts=store, publisher=publisher, run_id="run-h")
    tamiyo = HierarchicalTamiyo(model, config.tamiyo, config.hierarchical_control, view, publisher, "run-h")
    trainer = TolariaTrainer(model, tamiyo, config.tolaria, *spirals_small(), publisher=publisher, run_id="run-h")
    trainer.train()
    ledger = tamiyo.ledger
    budget, cost = 12, 10
    assert len(tamiyo.domains) == 3 and ledger.allocations
    for allocation, spend in zip(ledger.allocations, ledger.spends):
        assert sum(allocation.values()) == budget and all(v >= 0 for v in allocation.values())
        assert all(s in (0, cost) for s in spend.values())
    balance = {"input_layer": 0, "hidden_layer": 10, "late_layer": 0}
    for allocation, spend, after in zip(ledger.allocations, ledger.spends, ledger.balances):
        for d in balance:
            available = min(balance[d] + allocation[d], budget)
            assert spend[d] <= available  # never beyond the balance
            balance[d] = available - spend[d]
        assert balance == after
    spent = sum(sum(s.values()) for s in ledger.spends)
    assert spent == cost * tamiyo.germinations and tamiyo.germinations >= 2
    assert any(a["outcome"] == "FOSSILIZED" for a in tamiyo.lineage)
    decisions = [e.decoded.typed() for e in ReplayReader(MemorySource(publisher.log), publisher.serde)
                 .events(["tamiyo.decisions"])]
    allocations = [d for d in decisions if d.action == "allocate_atp"]
    assert len(allocations) == len(ledger.allocations)
    assert {f"atp.{d}" for d in balance} <= set(allocations[0].state_features)
    germinations = [d for d in decisions if d.action == "request_germination"]
    assert all("domain" in d.reason and "ATP" in d.reason for d in germinations)
