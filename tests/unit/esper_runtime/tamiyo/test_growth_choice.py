"""Where Tamiyo grows and what it grows there: the seed with the strongest measured growth signal, and designs
reading the wider of the layer's input and the model's first."""

from __future__ import annotations

import json

import torch
from torch import nn

from esper_runtime.config import EsperConfig
from esper_runtime.kasmina import wrap
from esper_runtime.tamiyo import TamiyoController
from views.urza_view import UrzaView
from streams.contracts import BlueprintSubmitted, KernelCompiled, KernelStatusChanged, KernelTagsAssigned
from streams.envelope import EnvelopeFactory


def _kernel(view, envs, name, features, second=None, params=1):
    aid, bp = f"k-{name}-{features}", f"bp-{name}"
    inputs = [{"name": "x", "shape": [None, features]}] + ([{"name": second[0], "shape": [None, second[1]]}]
                                                           if second else [])
    sig = {"inputs": inputs, "params": [{"name": "w", "shape": [params]}]}
    view.apply(BlueprintSubmitted(envelope=envs.next(f"blueprint/{bp}"), blueprint_id=bp, name=name, ir_version=1,
                                  ir_json="{}", submitted_by="test"))
    view.apply(KernelCompiled(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=bp, hardware="cpu",
                              pipeline="fast", toolchain_hash="t", sha256="s", size_bytes=1, uri="u", compile_ms=1.0,
                              signature_json=json.dumps(sig)))
    view.apply(KernelTagsAssigned(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, hardware="cpu",
                                  tags=["numerically_stable", "trainable"], risk_score=0.1, conf_level="High",
                                  method="rule-bootstrap", population=1))
    view.apply(KernelStatusChanged(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id=bp,
                                   from_status="COMPILED", to_status="VALIDATED"))


def test_growth_goes_where_the_signal_is_and_reads_the_wider_input():
    torch.manual_seed(0)
    # a 2-wide layer between a 12-feature input and the 8 outputs: the outputs need what it drops
    host = nn.Sequential(nn.Linear(12, 2), nn.ReLU(), nn.Linear(2, 8), nn.ReLU(), nn.Linear(8, 8))
    cfg = EsperConfig.model_validate({"kasmina": {"chunk_size": 8, "stats_every": 1}})
    model = wrap(host, cfg.kasmina, publisher=None, run_id="t")
    view, envs = UrzaView(), EnvelopeFactory("lib", "test")
    _kernel(view, envs, "chunk_only", 8, params=10)
    _kernel(view, envs, "reads_layer", 8, ("u", 8), params=100)
    _kernel(view, envs, "reads_model", 8, ("x0", 12), params=1000)
    _kernel(view, envs, "reads_model_elsewhere", 8, ("x0", 5), params=10)  # built for another model's input
    tamiyo = TamiyoController(model, cfg.tamiyo, view, publisher=None)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(512, 12, generator=gen)
    y = (x[:, :8] > 0).long().argmax(1)  # depends on 8 input features; the 2-wide layer cannot carry them
    model.train()
    for _ in range(3):
        model.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
    locations = tamiyo._locations(epoch=1)
    assert [(l, s) for _, l, s, _ in locations][0] in {(1, 0), (2, 0)}  # behind the narrow layer, not before it
    assert tamiyo._signal[(0, 0)][1] == "layer"  # the first layer's input is the model's
    assert tamiyo._signal[(1, 0)][1] == "model" and tamiyo._signal[(2, 0)][1] == "model"  # 2 < 12 and 8 < 12
    assert all(score > 0 for score, *_ in locations)
    ranked = [k.blueprint_id for _, k in tamiyo._kernels_for((2, 0), 8)]
    # the reader of the chosen input first even though it is the largest, then the other reader, then the rest;
    # a kernel built for another model's input width is never offered
    assert ranked == ["bp-reads_model", "bp-reads_layer", "bp-chunk_only"]


def test_karn_designs_are_offered_unless_the_run_holds_to_the_designs_people_wrote():
    host = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    view, envs = UrzaView(), EnvelopeFactory("lib", "test")
    _kernel(view, envs, "written", 8, params=10)
    _kernel(view, envs, "invented", 8, params=10)
    view.apply(BlueprintSubmitted(envelope=envs.next("blueprint/bp-invented"), blueprint_id="bp-invented",
                                  name="invented", ir_version=1, ir_json="{}", submitted_by="karn/evolve-v1",
                                  parent_ids=["bp-written"], mutation="deepen"))
    _kernel(view, envs, "reads_layer", 8, ("u", 4), params=100)
    offered = {}
    for karn in (True, False, "prefer"):
        cfg = EsperConfig.model_validate({"kasmina": {"chunk_size": 8}, "tamiyo": {"karn_designs": karn}})
        tamiyo = TamiyoController(wrap(host, cfg.kasmina, publisher=None, run_id="t"), cfg.tamiyo, view, publisher=None)
        tamiyo._signal[(0, 0)] = (1.0, "layer", 0.0)
        offered[karn] = [k.blueprint_id for _, k in tamiyo._kernels_for((0, 0), 8)]
        host = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    # offered: ranked as any design (the reader of the stronger input first, then by risk and tags, ties by id);
    # held to the people's library: never; preferred: Karn's first among designs reading the same input
    assert offered[True][0] == "bp-reads_layer" and sorted(offered[True][1:]) == ["bp-invented", "bp-written"]
    assert offered[False] == ["bp-reads_layer", "bp-written"]
    assert offered["prefer"][:2] == ["bp-reads_layer", "bp-invented"]


def test_a_design_s_field_record_in_earlier_runs_moves_it_in_the_ranking():
    host = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    view, envs = UrzaView(), EnvelopeFactory("lib", "test")
    _kernel(view, envs, "first", 8, params=10)
    _kernel(view, envs, "second", 8, params=10)
    record = {"bp-first": {"germinated": 3, "fossilized": 0}, "bp-second": {"germinated": 3, "fossilized": 3}}
    ranked = {}
    for evidence, field_record in ((True, record), (False, record), (True, {})):
        cfg = EsperConfig.model_validate({"kasmina": {"chunk_size": 8}, "tamiyo": {"field_evidence": evidence}})
        tamiyo = TamiyoController(wrap(host, cfg.kasmina, publisher=None, run_id="t"), cfg.tamiyo, view, publisher=None)
        tamiyo.field_record = field_record
        ranked[(evidence, bool(field_record))] = [k.blueprint_id for _, k in tamiyo._kernels_for((0, 0), 8)]
        host = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    # equal otherwise (ties by artifact id): culled 3 of 3 goes behind fossilized 3 of 3, only with the evidence on
    assert ranked[(True, True)] == ["bp-second", "bp-first"]
    assert ranked[(False, True)] == ranked[(True, False)] == ["bp-first", "bp-second"]
