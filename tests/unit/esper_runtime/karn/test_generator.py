"""Karn's generator (appendix D.2.1): the grammar, stage 0 (imitation) and stage 2 (REINFORCE on the checks)."""

from __future__ import annotations

import copy
import random

import pytest
import torch

from esper_runtime.blueprints.exceptions import BlueprintInvalid
from esper_runtime.blueprints.library import starter_blueprints
from esper_runtime.karn import generator as G
from esper_runtime.karn.mutate import check_child

LIBRARY = [bp.doc for bp in starter_blueprints()]


def test_every_library_design_is_a_sentence_that_decodes_to_what_it_computes():
    for doc in LIBRARY:
        tokens = G.encode(doc)
        assert tokens[0] == G.BOS and tokens[-1] == G.EOS
        assert G.canonical_key(G.decode(tokens)) == G.canonical_key(doc), doc["name"]
    assert len({G.canonical_key(d) for d in LIBRARY}) == len(LIBRARY)


def test_the_canonical_key_ignores_names_and_node_order_but_not_structure():
    doc = copy.deepcopy(next(d for d in LIBRARY if d["name"] == "swiglu"))
    renamed = copy.deepcopy(doc)
    ids = {n["id"]: f"z{i}" for i, n in enumerate(reversed(renamed["nodes"]))}
    for n in renamed["nodes"]:
        n["id"] = ids[n["id"]]
        n["inputs"] = [ids.get(s, s) for s in n["inputs"]]
    renamed["output"] = ids[renamed["output"]]
    renamed["nodes"].reverse()
    renamed["name"] = "another_name"
    assert G.canonical_key(renamed) == G.canonical_key(doc)
    changed = copy.deepcopy(doc)
    next(n for n in changed["nodes"] if n["op"] == "silu")["op"] = "gelu"
    assert G.canonical_key(changed) != G.canonical_key(doc)


@pytest.mark.parametrize("tokens", [
    [G.BOS, "op:relu", "in:-1", ";", "out:-1", "trainable:true", G.EOS],            # refers to a node not written
    [G.BOS, "op:relu", "in:x", ";", "out:-2", "trainable:true", G.EOS],             # output past the first node
    [G.BOS, "op:relu", "in:x", ";", "out:-1", G.EOS],                               # no trainable
    [G.BOS, "op:linear", "in:x", 'out="F"', 'out="F"', ";", "out:-1", "trainable:true", G.EOS],  # attr twice
    [G.BOS, "out:-1", "trainable:true", G.EOS],                                     # no node
    [G.BOS, "op:nonsense", "in:x", ";", "out:-1", "trainable:true", G.EOS],         # not an op
    [G.BOS, "op:relu", "in:x", ";", "out:-1", "trainable:true", "op:relu"],         # words after the end
])
def test_what_is_not_a_sentence_does_not_decode(tokens):
    assert G.decode(tokens) is None


def test_the_grammar_allows_every_library_sentence_and_only_sentences_that_decode():
    grammar = G._Grammar(G.Vocabulary())
    for doc in LIBRARY:
        tokens = G.encode(doc)
        for i in range(1, len(tokens)):
            assert tokens[i] in grammar.allowed(tokens[:i]), (doc["name"], tokens[:i])
    torch.manual_seed(0)
    untrained = G.Generator(G.Vocabulary())
    rng = random.Random(0)
    written = G.sample(untrained, [G.context(d) for d in LIBRARY], 30, rng, temperature=1.0)
    assert all(s.doc is not None for s in written)  # random weights, but every sentence is well formed
    assert all(len(s.doc["nodes"]) <= G.MAX_NODES for s in written)


def test_stage_0_writes_the_library_back_and_reports_what_it_writes_for_designs_held_out():
    torch.set_num_threads(1)
    im = G.imitate(LIBRARY, steps=300, seed=0, folds=2, held_out_steps=100)
    r = im.report
    assert r["designs"] == len(LIBRARY) and r["reconstruction_exact"] >= 0.9 and r["token_accuracy"] >= 0.95
    assert r["held_out"]["designs"] == len(LIBRARY) and 0.0 <= r["held_out"]["valid"] <= 1.0
    assert all(G._written_back(im.model, d) for d in LIBRARY[:4]) or r["reconstruction_exact"] < 1.0


def test_rewards_share_a_new_designs_credit_among_its_copies_and_grade_failures():
    doc = G._finish(G.decode(G.encode(LIBRARY[0])))
    ok = G.Sampled([], [], doc, None)
    copy_ = G.Sampled([], [], doc, "computes what a known design computes")
    not_identity = G.Sampled([], [], doc, "structure: does not start as the identity")
    broken = G.Sampled([], [], doc, "shapes: widths differ")
    assert [G.fast_reward(s) for s in (ok, copy_, not_identity, broken)] == [1.0, 0.1, 0.25, 0.0]
    assert G.batch_rewards([ok, ok, copy_]) == [0.5, 0.5, 0.1]


def test_reinforce_makes_a_rewarded_sentence_more_likely_and_an_unrewarded_one_less():
    torch.manual_seed(0)
    model = G.Generator(G.Vocabulary())
    ctx = G.context(LIBRARY[0])
    good, bad = (G.Sampled(G.encode(d), ctx, d) for d in (LIBRARY[0], LIBRARY[1]))

    def logp(s):
        model.eval()
        inputs, targets = G._batch(model.vocab, [s.tokens])
        with torch.no_grad():
            out = model(torch.tensor([s.context]), inputs).log_softmax(-1)
        return float(out[0].gather(1, targets[0][:, None]).sum())

    before = logp(good) - logp(bad)
    result = G.reinforce(model, [(good, 1.0), (bad, 0.0)], anchor=[], steps=10, lr=3e-3)
    assert result["updated"] and logp(good) - logp(bad) > before + 1.0
    assert G.reinforce(model, [(good, 1.0), (bad, 1.0)], anchor=[])["updated"] is False  # no advantage, no step


def test_the_fast_loop_finds_new_designs_that_pass_the_checks():
    torch.set_num_threads(1)
    im = G.imitate(LIBRARY, steps=200, seed=0, folds=0)
    known = {G.canonical_key(d) for d in LIBRARY}
    found, rounds = G.guided(im.model, [G.context(d) for d in LIBRARY], LIBRARY, known,
                             lambda d: check_child(d, []), random.Random(1), iterations=3, per_iteration=24)
    assert len(rounds) == 4 and all(r["written"] == 24 for r in rounds) and rounds[-1]["round"] == "evaluation"
    assert found, rounds
    for s in found:
        assert s.error is None and G.canonical_key(s.doc) not in known
        check_child(s.doc, [])  # publishable as it is
        assert s.doc["name"].startswith("karn_g") and s.doc["tags"] == ["generated"]


def test_a_saved_generator_loads_with_its_vocabulary_and_refuses_other_weights(tmp_path):
    torch.manual_seed(0)
    model = G.Generator(G.Vocabulary(extra=['value=0.25']))
    G.save_generator(model, tmp_path, {"stage": 0})
    loaded = G.load_generator(tmp_path)
    assert loaded.vocab.tokens == model.vocab.tokens
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    weights = tmp_path / "generator.pt"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    with pytest.raises(ValueError, match="SHA-256"):
        G.load_generator(tmp_path)


def test_an_oversized_design_is_not_encoded():
    nodes = [{"id": f"n{i}", "op": "relu", "inputs": ["x" if i == 0 else f"n{i - 1}"]} for i in range(G.MAX_NODES + 1)]
    with pytest.raises(BlueprintInvalid):
        G.encode({"nodes": nodes, "output": nodes[-1]["id"], "trainable": False})
