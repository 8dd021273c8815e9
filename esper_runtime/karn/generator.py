"""Karn's generator (appendix D.2.1): a small conditional Transformer that writes a BlueprintIR token by token.

A design is written as a sentence of a fixed grammar: per node, in an order where inputs come first, its op, its
inputs (``x``, ``u``, ``x0`` or a node ``k`` places back) and its attributes (sorted, each value one token: sizes
as ratios of F or D, kernel sizes, token counts, initializations, biases, scales),
then which node is the output and whether the design trains. Node ids are not written (a decoded design's nodes
are ``n1``, ``n2``... ), so two documents that compute the same thing are the same sentence.

The condition is a context vector summarizing the desired design (``context``): what it reads (its chunk, the
layer's input ``u``, the model's ``x0``), whether it trains, its tags, how many nodes of each op it has and its
size (log2 of its parameters at a 16-wide chunk). The generator is a causal Transformer over the tokens with the
context added to every position.

- **Stage 0, the apprentice** (``imitate``): trained by imitation on the human library; reported by how many
  designs it writes back exactly from their own context (greedy decoding, no grammar help), its token accuracy,
  and, held out k-fold, how many designs it never saw it writes exactly and how many of those it writes are valid.
- **Stage 2, the journeyman** (``guided``, ``reinforce``): sampled under the grammar (``sample``: only tokens the
  grammar allows at each place, so every sample is a well-formed document) from conditions between good designs'
  contexts, and trained by REINFORCE on what Tezzeret's static checks say (``fast_reward``, a new design's credit
  shared among its copies: ``batch_rewards``) and, in Karn's loop, on Urabrask's scores of the designs it wrote
  (the slow loop, ``evolve``). The imitation loss stays on at weight 0.5, so the grammar it learned is not
  forgotten; a round that loses half the best round's reward is rolled back.

The model is saved as a state dict and a card (vocabulary, sizes, SHA-256 of the weights) and loaded with
``torch.load(weights_only=True)``, as Karn's reward model is.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch
from torch import nn

from esper_runtime.blueprints.exceptions import BlueprintInvalid
from esper_runtime.blueprints.ir import WIDE_INPUTS, Blueprint, canonical_json, input_source
from esper_runtime.blueprints.ops import OPS
from esper_runtime.blueprints.validate import topo_order

__all__ = ["Vocabulary", "Generator", "encode", "decode", "canonical", "context", "CONTEXT_TAGS", "imitate",
           "sample", "reinforce", "guided", "fast_reward", "mixed_contexts", "save_generator", "load_generator", "canonical_key", "MAX_NODES"]

MAX_NODES = 12  # a generated design has at most this many nodes (the library's largest has 8)
BOS, EOS, END_NODE = "<bos>", "<eos>", ";"
CONTEXT_TAGS = ("mlp", "residual", "wide", "deep", "adapter", "bottleneck", "small", "low_rank", "gated",
                "attention_like", "attention", "conv", "local", "norm", "branch", "skip", "fixed_function",
                "activation", "bounded", "generated")
_RATIOS = (0.125, 0.25, 0.5, 2, 4, 8)
_ATTR_VALUES: dict[str, tuple] = {
    "out": ("F", "D", *({"F": r} for r in _RATIOS), *({"D": r} for r in _RATIOS)),
    "bias": (0, 1),
    "init": ("zeros", "default"),
    "kernel_size": (3, 5, 7),
    "tokens": (2, 4, 8),
    "value": (0.1, 0.5, 1.0),
}


def _attr_token(key: str, value: Any) -> str:
    return f"{key}={canonical_json(value)}"


class Vocabulary:
    """The grammar's tokens: fixed by the op table and the attribute values above, plus any attribute value a
    training design carries (so the vocabulary a model was trained with travels with it, on its card)."""

    def __init__(self, extra: Iterable[str] = (), tokens: Sequence[str] | None = None):
        if tokens is not None:  # a saved model's vocabulary, in its order
            self.tokens = list(tokens)
            self.index = {t: i for i, t in enumerate(self.tokens)}
            return
        tokens = [BOS, EOS, END_NODE, "trainable:true", "trainable:false"]
        tokens += [f"op:{op}" for op in sorted(OPS)]
        tokens += [f"in:{src}" for src in ("x", *sorted(WIDE_INPUTS))]
        tokens += [f"in:-{k}" for k in range(1, MAX_NODES + 1)]
        tokens += [f"out:-{k}" for k in range(1, MAX_NODES + 1)]
        tokens += [_attr_token(key, v) for key, values in _ATTR_VALUES.items() for v in values]
        for t in extra:
            if t not in tokens:
                tokens.append(t)
        self.tokens = tokens
        self.index = {t: i for i, t in enumerate(tokens)}

    def __len__(self) -> int:
        return len(self.tokens)

    def ids(self, tokens: Sequence[str]) -> list[int]:
        return [self.index[t] for t in tokens]


# ------------------------------------------------------------------------------------------------ the grammar
def canonical(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with its nodes in input-first order and renamed ``n1``, ``n2``... (what it computes, not what
    its author called things or the order it listed them in): depth first from the output, each node's inputs in
    their order; nodes the output does not read (validation allows none that matter) follow in listed order."""
    topo_order(doc)  # BlueprintInvalid on a cycle
    nodes = {n["id"]: n for n in doc["nodes"]}
    order, done = [], set()

    def visit(nid: str) -> None:
        if nid in done or nid not in nodes:
            return
        done.add(nid)
        for src in nodes[nid]["inputs"]:
            visit(src)
        order.append(nodes[nid])

    visit(doc["output"])
    for nid in nodes:
        visit(nid)
    names = {node["id"]: f"n{i + 1}" for i, node in enumerate(order)}
    nodes = []
    for node in order:
        out = {"id": names[node["id"]], "op": node["op"], "inputs": [names.get(s, s) for s in node["inputs"]]}
        if node.get("attrs"):
            out["attrs"] = dict(sorted(node["attrs"].items()))
        nodes.append(out)
    return {"nodes": nodes, "output": names.get(doc["output"], doc["output"]), "trainable": bool(doc["trainable"])}


def canonical_key(doc: dict[str, Any]) -> str:
    """SHA-256 of ``canonical(doc)``: the same for two documents that differ only in node ids and order."""
    return hashlib.sha256(canonical_json(canonical(doc)).encode()).hexdigest()


def encode(doc: dict[str, Any]) -> list[str]:
    """The design as a sentence (BOS ... EOS). BlueprintInvalid when it has more than MAX_NODES nodes."""
    c = canonical(doc)
    if len(c["nodes"]) > MAX_NODES:
        raise BlueprintInvalid("size", f"{len(c['nodes'])} nodes, the generator writes at most {MAX_NODES}")
    place = {node["id"]: i for i, node in enumerate(c["nodes"])}
    tokens = [BOS]
    for i, node in enumerate(c["nodes"]):
        tokens.append(f"op:{node['op']}")
        for src in node["inputs"]:
            tokens.append(f"in:{src}" if src not in place else f"in:-{i - place[src]}")
        tokens += [_attr_token(k, v) for k, v in node.get("attrs", {}).items()]
        tokens.append(END_NODE)
    if c["output"] not in place:
        raise BlueprintInvalid("structure", "the output is not a node")
    tokens += [f"out:-{len(c['nodes']) - place[c['output']]}", f"trainable:{'true' if c['trainable'] else 'false'}",
               EOS]
    return tokens


def decode(tokens: Sequence[str]) -> dict[str, Any] | None:
    """A sentence back to a document (nodes ``n1``...; name, description and tags left for the caller), or None
    when it is not a sentence of the grammar."""
    toks = list(tokens)
    if toks and toks[0] == BOS:
        toks = toks[1:]
    nodes: list[dict[str, Any]] = []
    i = 0
    try:
        while toks[i].startswith("op:"):
            op = toks[i][3:]
            if op not in OPS:
                return None
            node: dict[str, Any] = {"id": f"n{len(nodes) + 1}", "op": op, "inputs": []}
            i += 1
            while toks[i].startswith("in:"):
                ref = toks[i][3:]
                if ref.startswith("-"):
                    back = int(ref[1:])
                    if not 1 <= back <= len(nodes):
                        return None
                    node["inputs"].append(nodes[len(nodes) - back]["id"])
                else:
                    node["inputs"].append(ref)
                i += 1
            while toks[i] != END_NODE:
                key, _, value = toks[i].partition("=")
                if not value or key in node.get("attrs", {}):
                    return None
                node.setdefault("attrs", {})[key] = json.loads(value)
                i += 1
            i += 1
            nodes.append(node)
        if not nodes or not toks[i].startswith("out:-"):
            return None
        back = int(toks[i][5:])
        if not 1 <= back <= len(nodes) or toks[i + 1] not in ("trainable:true", "trainable:false"):
            return None
        if i + 2 < len(toks) and toks[i + 2] != EOS:
            return None
        return {"nodes": nodes, "output": nodes[len(nodes) - back]["id"],
                "trainable": toks[i + 1] == "trainable:true"}
    except (IndexError, ValueError):
        return None


class _Grammar:
    """Which tokens may come next, given the sentence so far: what ``sample`` masks by. It allows exactly the
    sentences ``decode`` reads (an op's inputs, its attributes in sorted order and the ones it requires, a node
    or the output after a node, at most MAX_NODES nodes)."""

    def __init__(self, vocab: Vocabulary):
        self.vocab = vocab
        self.ops = [t for t in vocab.tokens if t.startswith("op:") and t[3:] in OPS]
        self.attrs: dict[str, list[tuple[str, str]]] = {}
        for t in vocab.tokens:
            key, sep, _ = t.partition("=")
            if sep and not t.startswith(("op:", "in:", "out:", "trainable:")):
                self.attrs.setdefault(key, []).append((key, t))

    def allowed(self, prefix: Sequence[str]) -> list[str]:
        nodes, op, inputs, keys = 0, None, 0, []
        state = "node"  # node: an op or the output; inputs; attrs; trainable; eos; done
        for t in prefix[1:]:
            if state == "node":
                if t.startswith("op:"):
                    op, inputs, keys, state = t[3:], 0, [], "inputs"
                else:
                    state = "trainable"
            elif state in ("inputs", "attrs"):
                if t.startswith("in:"):
                    inputs += 1
                elif t == END_NODE:
                    nodes, state = nodes + 1, "node"
                else:
                    keys.append(t.partition("=")[0])
                    state = "attrs"
            elif state == "trainable":
                state = "eos"
            elif state == "eos":
                state = "done"
        if state == "node":
            out = [f"out:-{k}" for k in range(1, nodes + 1)]
            return (self.ops if nodes < MAX_NODES else []) + out
        if state in ("inputs", "attrs"):
            spec = OPS[op]
            if state == "inputs" and inputs < spec.arity:
                srcs = ["in:x", *(f"in:{w}" for w in sorted(WIDE_INPUTS))]
                return srcs + [f"in:-{k}" for k in range(1, nodes + 1)]
            later = [t for key, options in self.attrs.items() if key in spec.attrs and (not keys or key > keys[-1])
                     for _, t in options]
            required = [k for k in spec.required if k not in keys]
            if required:
                return [t for t in later if t.partition("=")[0] <= required[0]]
            return later + [END_NODE]
        if state == "trainable":
            return ["trainable:true", "trainable:false"]
        return [EOS]


# ------------------------------------------------------------------------------------------------ the context
def _params_at(doc: dict[str, Any], width: int = 16, wide: int = 32) -> int | None:
    from esper_runtime.blueprints.validate import param_count

    try:
        bp = Blueprint.parse({**doc, "name": "probe"})
        return param_count(bp.instantiate(width, wide if bp.reads_input else None))
    except Exception:  # noqa: BLE001 - a context is a summary: a design that does not instantiate has no size
        return None


def context(doc: dict[str, Any], tags: Iterable[str] | None = None) -> list[float]:
    """The condition for a design like ``doc``: what it reads, whether it trains, its tags, its ops and its size."""
    reads = input_source(doc)
    tags = set(doc.get("tags", []) if tags is None else tags)
    ops = [n.get("op") for n in doc.get("nodes", [])]
    params = _params_at(doc)
    return ([float(reads is None), float(reads == "layer"), float(reads == "model"), float(bool(doc.get("trainable")))]
            + [float(t in tags) for t in CONTEXT_TAGS]
            + [ops.count(op) / 4.0 for op in sorted(OPS)]
            + [math.log2(1 + params) / 16.0 if params is not None else 0.0, len(ops) / MAX_NODES])


CONTEXT_DIM = 4 + len(CONTEXT_TAGS) + len(OPS) + 2


# ------------------------------------------------------------------------------------------------ the model
class Generator(nn.Module):
    """A causal Transformer over the grammar's tokens, the context added to every position."""

    def __init__(self, vocab: Vocabulary, d_model: int = 64, layers: int = 2, heads: int = 4, max_len: int = 96):
        super().__init__()
        self.vocab = vocab
        self.max_len = max_len
        self.config = {"d_model": d_model, "layers": layers, "heads": heads, "max_len": max_len}
        self.embed = nn.Embedding(len(vocab), d_model)
        self.position = nn.Embedding(max_len, d_model)
        self.condition = nn.Sequential(nn.Linear(CONTEXT_DIM, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        layer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.1, batch_first=True,
                                           norm_first=True)
        self.body = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, len(vocab))

    def forward(self, ctx: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Logits (batch, T, vocab) of the token after each position of ``ids`` (batch, T)."""
        t = ids.shape[1]
        h = self.embed(ids) + self.position(torch.arange(t, device=ids.device)) + self.condition(ctx)[:, None, :]
        mask = nn.Transformer.generate_square_subsequent_mask(t, device=ids.device)
        return self.head(self.body(h, mask=mask, is_causal=True))


def _batch(vocab: Vocabulary, sentences: Sequence[Sequence[str]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Padded inputs and targets (-100 where there is nothing to predict)."""
    longest = max(len(s) for s in sentences)
    inputs = torch.full((len(sentences), longest - 1), vocab.index[EOS], dtype=torch.long)
    targets = torch.full((len(sentences), longest - 1), -100, dtype=torch.long)
    for i, s in enumerate(sentences):
        ids = vocab.ids(s)
        inputs[i, :len(ids) - 1] = torch.tensor(ids[:-1])
        targets[i, :len(ids) - 1] = torch.tensor(ids[1:])
    return inputs, targets


def _imitation_loss(model: Generator, contexts: torch.Tensor, sentences, smoothing: float = 0.1) -> torch.Tensor:
    """Teacher-forced cross-entropy; label smoothing keeps some probability off the library's exact sentences, so
    sampling from the trained model can write something else (greedy decoding still writes them back)."""
    inputs, targets = _batch(model.vocab, sentences)
    logits = model(contexts, inputs)
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                                       label_smoothing=smoothing)


def _fit(model: Generator, docs: Sequence[dict], steps: int, seed: int, lr: float = 3e-3) -> None:
    torch.manual_seed(seed)
    sentences = [encode(d) for d in docs]
    contexts = torch.tensor([context(d) for d in docs])
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    for _ in range(steps):
        opt.zero_grad()
        _imitation_loss(model, contexts, sentences).backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()


@torch.no_grad()
def _write(model: Generator, ctx: list[float], *, greedy: bool, grammar: _Grammar | None, temperature: float = 1.0,
           gen: torch.Generator | None = None) -> tuple[list[str], float]:
    """One sentence from ``ctx``: (tokens, log-probability under the model)."""
    model.eval()
    vocab = model.vocab
    tokens, logp = [BOS], 0.0
    c = torch.tensor([ctx])
    while len(tokens) < model.max_len and tokens[-1] != EOS:
        logits = model(c, torch.tensor([vocab.ids(tokens)]))[0, -1]
        if grammar is not None:
            allowed = grammar.allowed(tokens)
            mask = torch.full_like(logits, -math.inf)
            mask[vocab.ids(allowed)] = 0.0
            logits = logits + mask
        probs = torch.softmax(logits / (1.0 if greedy else temperature), dim=-1)
        nxt = int(probs.argmax()) if greedy else int(torch.multinomial(probs, 1, generator=gen))
        logp += float(torch.log(probs[nxt].clamp_min(1e-12)))
        tokens.append(vocab.tokens[nxt])
    return tokens, logp


def _finish(doc: dict[str, Any], name_prefix: str = "karn_g") -> dict[str, Any]:
    """A decoded sentence as a publishable document: a name from its structure, a description, a tag."""
    full = {"ir_version": 1, **doc, "tags": ["generated"]}
    full["name"] = name_prefix + canonical_key(full)[:12]
    full["description"] = "written by Karn's generator"
    return full


# ------------------------------------------------------------------------------------------------ stage 0
@dataclass
class Imitation:
    model: Generator
    report: dict[str, Any] = field(default_factory=dict)


def imitate(docs: Sequence[dict[str, Any]], steps: int = 400, seed: int = 0, folds: int = 4,
            held_out_steps: int | None = None) -> Imitation:
    """Stage 0: the generator trained on ``docs`` (the human library), with its report: ``reconstruction_exact``
    (the share of ``docs`` written back exactly, greedy, from their own context, no grammar help),
    ``token_accuracy`` (teacher-forced), and ``held_out`` (``folds``-fold: each design written by a generator that
    never saw it — the share written exactly, and the share whose writing is a valid design at all)."""
    from esper_runtime.karn.mutate import check_child

    docs = [d for d in docs if _encodable(d)]
    vocab = Vocabulary(t for d in docs for t in encode(d))
    model = Generator(vocab)
    _fit(model, docs, steps, seed)
    exact = sum(_written_back(model, d) for d in docs)
    with torch.no_grad():
        model.eval()
        inputs, targets = _batch(vocab, [encode(d) for d in docs])
        pred = model(torch.tensor([context(d) for d in docs]), inputs).argmax(-1)
        known = targets != -100
        token_accuracy = float((pred[known] == targets[known]).float().mean())
    held = {"exact": 0, "valid": 0, "designs": 0}
    if folds > 1 and len(docs) >= folds:
        order = list(range(len(docs)))
        random.Random(seed).shuffle(order)
        for f in range(folds):
            test = [docs[i] for i in order[f::folds]]
            train = [docs[i] for i in order if i not in order[f::folds]]
            m = Generator(vocab)
            _fit(m, train, held_out_steps or steps, seed + 1 + f)
            for d in test:
                held["designs"] += 1
                tokens, _ = _write(m, context(d), greedy=True, grammar=None)
                out = decode(tokens)
                held["exact"] += int(out is not None and canonical_key(out) == canonical_key(d))
                try:
                    held["valid"] += int(out is not None and bool(check_child(_finish(out), [])))
                except BlueprintInvalid:
                    pass
    n = max(held["designs"], 1)
    report = {"designs": len(docs), "steps": steps, "reconstruction_exact": round(exact / max(len(docs), 1), 4),
              "token_accuracy": round(token_accuracy, 4),
              "held_out": {"folds": folds, "designs": held["designs"], "exact": round(held["exact"] / n, 4),
                           "valid": round(held["valid"] / n, 4)},
              "parameters": sum(p.numel() for p in model.parameters()),
              "criterion": "appendix G stage 0: high graph reconstruction accuracy on the initial library"}
    return Imitation(model, report)


def _encodable(doc: dict[str, Any]) -> bool:
    try:
        encode(doc)
        return True
    except (BlueprintInvalid, KeyError, TypeError):
        return False


def _written_back(model: Generator, doc: dict[str, Any]) -> bool:
    tokens, _ = _write(model, context(doc), greedy=True, grammar=None)
    out = decode(tokens)
    return out is not None and canonical_key(out) == canonical_key(doc)


# ------------------------------------------------------------------------------------------------ stage 2
@dataclass
class Sampled:
    tokens: list[str]
    context: list[float]
    doc: dict[str, Any] | None  # the publishable document, when the sentence decodes
    error: str | None = None  # why it may not be published (static checks, a copy of a known design)


def sample(model: Generator, contexts: Sequence[list[float]], n: int, rng: random.Random,
           temperature: float = 1.0, known: set[str] | None = None,
           check: Callable[[dict], None] | None = None) -> list[Sampled]:
    """``n`` designs written under the grammar from contexts drawn from ``contexts``; each checked by ``check``
    (BlueprintInvalid: not publishable) and against ``known`` (canonical keys of designs that exist)."""
    grammar = _Grammar(model.vocab)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    out = []
    for _ in range(n):
        ctx = rng.choice(list(contexts))
        tokens, _ = _write(model, ctx, greedy=False, grammar=grammar, temperature=temperature, gen=gen)
        raw = decode(tokens)
        if raw is None:
            out.append(Sampled(tokens, ctx, None, "not a sentence of the grammar"))
            continue
        doc = _finish(raw)
        error = None
        if known is not None and canonical_key(doc) in known:
            error = "computes what a known design computes"
        elif check is not None:
            try:
                check(doc)
            except BlueprintInvalid as exc:
                error = f"{exc.stage}: {exc}"[:200]
            except Exception as exc:  # noqa: BLE001 - a written design that breaks a check is refused, not fatal
                error = f"check: {type(exc).__name__}: {exc}"[:200]
        out.append(Sampled(tokens, ctx, doc, error))
    return out


def reinforce(model: Generator, episodes: Sequence[tuple[Sampled, float]], anchor: Sequence[dict[str, Any]],
              steps: int = 4, lr: float = 1e-3, anchor_weight: float = 0.5, seed: int = 0) -> dict[str, float]:
    """REINFORCE on ``episodes`` ((sample, reward) pairs; the advantage is the reward less the batch's mean, over
    its standard deviation), with the imitation
    loss on ``anchor`` (the library) at ``anchor_weight``. Returns the mean reward and the last loss."""
    if not episodes:
        return {"episodes": 0}
    torch.manual_seed(seed)
    rewards = torch.tensor([r for _, r in episodes], dtype=torch.float32)
    advantage = (rewards - rewards.mean()) / (rewards.std(unbiased=False) + 1e-6)
    if float((rewards - rewards.mean()).abs().sum()) == 0.0:
        return {"episodes": len(episodes), "mean_reward": round(float(rewards.mean()), 4), "updated": False}
    sentences = [s.tokens for s, _ in episodes]
    contexts = torch.tensor([s.context for s, _ in episodes])
    anchor = [d for d in anchor if _encodable(d)]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        opt.zero_grad()
        inputs, targets = _batch(model.vocab, sentences)
        logits = model(contexts, inputs)
        logp = -nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
        loss = -(advantage * logp.sum(dim=1)).mean()
        if anchor and anchor_weight:
            loss = loss + anchor_weight * _imitation_loss(model, torch.tensor([context(d) for d in anchor]),
                                                          [encode(d) for d in anchor])
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    return {"episodes": len(episodes), "mean_reward": round(float(rewards.mean()), 4), "updated": True,
            "loss": round(float(loss.detach()), 4)}


def fast_reward(s: Sampled) -> float:
    """What Tezzeret's static checks say of a sample, as a reward: 1 for a new design that passes them all, 0.25
    for one that validates but breaks a rule a graft needs (it must start as the identity), 0.1 for a copy of a
    known design (grammatical, nothing new), 0 for one that does not validate (shapes, sizes, ops)."""
    if s.doc is None:
        return 0.0
    if s.error is None:
        return 1.0
    if s.error.startswith("computes what"):
        return 0.1
    return 0.25 if s.error.startswith("structure") else 0.0


def mixed_contexts(contexts: Sequence[list[float]], n: int, rng: random.Random) -> list[list[float]]:
    """``n`` conditions between two of ``contexts`` (a random point on the line between them): designs like
    neither, asked for."""
    out = []
    for _ in range(n):
        a, b = rng.sample(list(contexts), 2) if len(contexts) > 1 else (contexts[0], contexts[0])
        w = rng.random()
        out.append([w * x + (1 - w) * y for x, y in zip(a, b)])
    return out


def batch_rewards(batch: Sequence[Sampled]) -> list[float]:
    """``fast_reward`` of each sample, a new design's 1 shared among the samples that wrote it: a round that writes
    one good design 40 times earns what one writing of it earns, so the policy is not paid to collapse onto it."""
    counts = Counter(canonical_key(b.doc) for b in batch if b.doc is not None and b.error is None)
    return [fast_reward(b) / counts[canonical_key(b.doc)] if b.doc is not None and b.error is None
            else fast_reward(b) for b in batch]


def guided(model: Generator, contexts: Sequence[list[float]], anchor: Sequence[dict[str, Any]], known: set[str],
           check: Callable[[dict], None], rng: random.Random, iterations: int = 8, per_iteration: int = 48,
           temperature: float = 1.5) -> tuple[list[Sampled], list[dict[str, Any]]]:
    """Stage 2's fast loop: ``iterations`` rounds of sampling ``per_iteration`` designs from conditions between
    ``contexts``, each judged by the static checks (``batch_rewards``) and the generator updated by REINFORCE. A
    round whose mean reward is under half the best round's so far takes no step: the generator goes back to the
    best round's weights (a rollback, as Tolaria's), and the loop ends on them; then one more batch is written at
    temperature 1 with no step (``round: "evaluation"``: the policy as it is). The publishable designs found (new, checked, each once) and
    per round the shares: written designs that are new, new ones that pass the checks."""
    found: dict[str, Sampled] = {}
    rounds = []
    best, best_state = -1.0, None
    for it in range(iterations):
        # new means not in ``known``: a design found in an earlier round is not punished when written again, or
        # the policy is pushed off every good region it finds (it was: the share collapsed to 0 in a few rounds)
        batch = sample(model, mixed_contexts(contexts, per_iteration, rng), per_iteration, rng,
                       temperature=temperature, known=known, check=check)
        tally = _tally(batch, found)
        rewards = batch_rewards(batch)
        mean = sum(rewards) / len(rewards) if rewards else 0.0
        restored = False
        if best_state is not None and mean < 0.5 * best:
            # the policy fell off what it had learned (REINFORCE does, now and then, and did here: a generation's
            # share went from 0.54 to 0 and stayed): back to the best round's weights, no step from this one
            model.load_state_dict(best_state)
            restored = True
        else:
            if mean >= best:
                best, best_state = mean, copy.deepcopy(model.state_dict())
            reinforce(model, list(zip(batch, rewards)), anchor, seed=rng.randrange(2**31))
        rounds.append({"round": it + 1, **tally, "mean_reward": round(mean, 4), "restored": restored})
    if best_state is not None:  # the next generation starts from the best policy of this one, not its last step
        model.load_state_dict(best_state)
    # the policy judged as it is: a batch written at temperature 1 with no step taken, its share reported
    batch = sample(model, mixed_contexts(contexts, per_iteration, rng), per_iteration, rng, temperature=1.0,
                   known=known, check=check)
    rounds.append({"round": "evaluation", **_tally(batch, found), "mean_reward": None, "restored": False})
    return list(found.values()), rounds


def _tally(batch: Sequence[Sampled], found: dict[str, Sampled]) -> dict[str, Any]:
    """A round's counts (written, new, new and checked, their share, distinct); its publishable designs are added
    to ``found`` (each structure once)."""
    new = [b for b in batch if b.doc is not None and not (b.error or "").startswith("computes what")]
    ok = [b for b in new if b.error is None]
    keys: dict[str, Sampled] = {}
    for b in ok:  # the first writing of each structure, as before
        keys.setdefault(canonical_key(b.doc), b)
    for key, b in keys.items():
        found.setdefault(key, b)
    return {"written": len(batch), "new": len(new), "new_and_checked": len(ok),
            "checked_share_of_new": round(len(ok) / len(new), 4) if new else None, "distinct_checked": len(keys)}


# ------------------------------------------------------------------------------------------------ storage
def save_generator(model: Generator, directory: Path, report: dict[str, Any]) -> Path:
    """The state dict and a card (vocabulary, sizes, the weights' SHA-256, the stage-0 report)."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / "generator.pt"
    torch.save(model.state_dict(), weights)
    card = {"vocabulary": model.vocab.tokens, "config": model.config,
            "sha256": hashlib.sha256(weights.read_bytes()).hexdigest(), "report": report}
    (directory / "generator.json").write_text(json.dumps(card, indent=1, sort_keys=True))
    return weights


def load_generator(directory: Path) -> Generator:
    """The saved generator; ValueError when the weights are not the ones its card names."""
    card = json.loads((directory / "generator.json").read_text())
    weights = directory / "generator.pt"
    data = weights.read_bytes()
    if hashlib.sha256(data).hexdigest() != card["sha256"]:
        raise ValueError(f"{weights}: SHA-256 does not match its card; not loaded")
    vocab = Vocabulary(tokens=card["vocabulary"])
    model = Generator(vocab, **card["config"])
    model.load_state_dict(torch.load(weights, weights_only=True))
    return model
