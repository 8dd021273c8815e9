"""``esper karn evolve``: Karn invents designs and sends them through the pipeline everyone's designs go through.

Each generation:

1. **Read the library from the log** (Urza's view): every design with kernels for the target run's seed shapes,
   and how Urabrask judged them. A design's *score* is Urabrask's: over the shapes, the mean of ``1 - risk_score``
   of its best VALIDATED kernel, 0 where it ended without one (rejected, failed to compile).
2. **Choose operators** with a UCB1 bandit conditioned on the parent (``OperatorPolicy``: a chunk design, a
   reader of the layer's input, a reader of the model's) whose evidence is the log itself: every Karn child Urza
   holds, its operator (``BlueprintSubmitted.mutation``), its first parent, its score and its field record.
   Nothing of the policy lives outside the log: a rerun on the same log chooses the same.
3. **Choose parents** among the scored designs, better ranks more often, the score weighed by the design's field
   record (``field_factor``: FieldReports, FOSSILIZED / germinated); **mutate** (``karn.mutate``); keep children
   that pass the static checks and compute something no design in the library computes.
4. **Choose among the candidates** (``select``): three times as many as the generation's quota are made; the
   reward model (``karn.reward``, refitted from the log) predicts Urabrask's score of each before it is compiled,
   and the kept ones maximize prediction plus a novelty bonus (the structural distance from the library).
5. **Write** new designs with the generator (``karn.generator``; ``generated`` a generation): trained once by
   imitation of the human library (stage 0), then each generation by REINFORCE on Urabrask's scores of its designs
   on the log (the slow loop) and on the static checks (the fast loop); its finds are chosen as in 4 and have
   ``mutation: generate`` and no parents.
6. **Submit** them with their lineage (``parent_ids``, ``mutation``) for the run's shapes; Tezzeret compiles and
   Urabrask measures in their own processes; wait until every child is settled.

Reported (the last line of ``--json``): per generation the children's mean score against their parents', and the
share validated; the stage-1 criterion (appendix G: mutated children's mean score above their parents'), stage 0
and stage 2 (the generator's); how the reward model's predictions, made before compiling, ranked the designs it
chose (Kendall tau); cost per design.
"""

from __future__ import annotations

import dataclasses
import math
import random
from collections import Counter
import time
import uuid
from dataclasses import dataclass, field
from typing import Callable

from esper_runtime.blueprints.ir import Blueprint, reads_input
from esper_runtime.karn.mutate import OPERATORS, Child, mutate, structure_key
from esper_runtime.run.library import ENDED, Workers, kernels_at, library_status, wait_settled
from esper_runtime.karn.exceptions import KarnError
from esper_runtime.karn.lineage import field_factor

__all__ = ["EvolveOptions", "OperatorPolicy", "design_score", "field_factor", "propose", "select", "evolve",
           "field_trial", "FIELD_ARMS", "KarnError"]

PRODUCER = "karn/evolve-v1"
GENERATED = "generate"  # BlueprintSubmitted.mutation of a design Karn's generator wrote (it has no parents)


@dataclass
class EvolveOptions:
    generations: int = 3
    per_generation: int = 4
    seed: int = 0
    exploration: float = 1.0  # UCB1's c
    attempts: int = 40  # mutation tries per child before a generation gives up on filling its quota
    timeout_s: float = 3600
    reward_model: bool = True  # rank candidates by the reward model's prediction (karn.reward) when it has one
    novelty_weight: float = 0.5
    generated: int = 2  # designs a generation takes from the generator (karn.generator), beside the mutated ones
    generator_rounds: int = 10  # stage 2's fast loop: rounds of sampling + REINFORCE on the static checks
    generator_samples: int = 48  # designs written per round
    generator_steps: int = 300  # stage 0: imitation steps on the human library


def design_score(view, bid: str, shapes, reads: bool) -> float | None:
    """Urabrask's score of a design over ``shapes`` (0..1), or None while any shape is unsettled. A design that
    reads a wide input is not scored at shapes without one (a Conv2d layer)."""
    record = view.blueprints.get(bid)
    own = [k for k in view.kernels.values() if k.blueprint_id == bid]
    values = []
    for width, d in shapes:
        if reads and d is None:
            continue
        kernels = kernels_at(own, width, d, reads)
        validated = [k for k in kernels if k.status == "VALIDATED"]
        if validated:
            risks = [k.risk_score for k in validated if k.risk_score is not None]
            values.append(1.0 - min(risks) if risks else 0.5)
        elif any(k.status in ENDED for k in kernels) or (record is not None and (
                record.status == "REJECTED" or width in record.failed_widths)):
            values.append(0.0)
        else:
            return None
    return sum(values) / len(values) if values else None


def parent_context(doc: dict) -> str:
    """What a parent is, for the operator policy: ``chunk`` (it reads only its chunk), or the wide input it reads
    (``layer``: ``u``, ``model``: ``x0``) — an operator that helps a reader may not help a chunk design."""
    from esper_runtime.blueprints.ir import input_source

    return input_source(doc) or "chunk"


@dataclass
class OperatorPolicy:
    """UCB1 over the operators, conditioned on the parent's context (``parent_context``): within a context, each
    operator's mean reward of the children it made from such parents plus ``c·sqrt(2 ln N / n)``; an operator not
    yet tried in the context is valued by its mean over every context plus the bonus of one try; one never tried
    anywhere comes first. A child's reward is its score weighed by its field record (``field_factor``).
    ``from_view`` rebuilds the policy from the log."""

    counts: dict[str, int] = field(default_factory=dict)
    totals: dict[str, float] = field(default_factory=dict)
    c: float = 1.0
    by_context: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # (context, op) -> [n, total]

    @classmethod
    def from_view(cls, view, shapes, c: float = 1.0,
                  outcomes: dict[str, dict[str, int]] | None = None) -> "OperatorPolicy":
        policy = cls(c=c)
        for rec in view.blueprints.values():
            if rec.mutation in OPERATORS and rec.ir:
                score = design_score(view, rec.blueprint_id, shapes, reads_input(rec.ir))
                if score is not None:
                    parent = view.blueprints.get(rec.parents[0]) if rec.parents else None
                    context = parent_context(parent.ir) if parent is not None and parent.ir else None
                    policy.record(rec.mutation, score * field_factor((outcomes or {}).get(rec.blueprint_id)),
                                  context)
        return policy

    def record(self, operator: str, reward: float, context: str | None = None) -> None:
        self.counts[operator] = self.counts.get(operator, 0) + 1
        self.totals[operator] = self.totals.get(operator, 0.0) + reward
        if context is not None:
            row = self.by_context.setdefault((context, operator), [0, 0.0])
            row[0] += 1
            row[1] += reward

    def mean(self, operator: str) -> float | None:
        n = self.counts.get(operator, 0)
        return self.totals[operator] / n if n else None

    def value(self, operator: str, context: str | None = None) -> float:
        n = self.counts.get(operator, 0)
        if not n:
            return math.inf
        if context is not None:
            in_context = sum(row[0] for (ctx, _), row in self.by_context.items() if ctx == context)
            row = self.by_context.get((context, operator))
            if row:
                return row[1] / row[0] + self.c * math.sqrt(2 * math.log(max(in_context, 1)) / row[0])
            return self.totals[operator] / n + self.c * math.sqrt(2 * math.log(in_context + 1))
        total = sum(self.counts.values())
        return self.totals[operator] / n + self.c * math.sqrt(2 * math.log(total) / n)

    def ranked(self, rng: random.Random, context: str | None = None) -> list[str]:
        """Operators best first for a parent of ``context`` (ties in a random order)."""
        ops = list(OPERATORS)
        rng.shuffle(ops)
        return sorted(ops, key=lambda op: -self.value(op, context))


def _population(view, shapes, outcomes: dict[str, dict[str, int]] | None = None) -> list[tuple[float, Blueprint]]:
    """Designs with a positive score, best first: the parents to choose from. With ``outcomes`` (the field
    reports per design, ``lineage.field_outcomes``) a design's score is weighed by ``field_factor``: what
    fossilized where it was grafted is bred from more, what was culled or rolled back less."""
    out = []
    for rec in view.blueprints.values():
        if not rec.ir or rec.status == "REJECTED":
            continue
        score = design_score(view, rec.blueprint_id, shapes, reads_input(rec.ir))
        if score and outcomes:
            score *= field_factor(outcomes.get(rec.blueprint_id))
        if score:
            try:
                out.append((score, Blueprint.parse(rec.ir)))
            except Exception:  # noqa: BLE001 - a stored design this version cannot parse is no parent
                continue
    out.sort(key=lambda t: (-t[0], t[1].blueprint_id))
    return out


def _pick(population, rng: random.Random) -> Blueprint:
    """A parent, by rank: the i-th best with weight 1/(i+1)."""
    weights = [1.0 / (i + 1) for i in range(len(population))]
    return rng.choices(population, weights=weights, k=1)[0][1]


def propose(view, shapes, k: int, rng: random.Random, policy: OperatorPolicy, attempts: int = 40,
            pool: int = 3, predictor=None, novelty_weight: float = 0.5,
            outcomes: dict[str, dict[str, int]] | None = None) -> list[Child]:
    """Up to ``k`` checked children of the library's scored designs, none computing what a design in the library
    (or another child) computes: ``pool``·k candidates are made, and the ``k`` kept are chosen one at a time
    (``select``) by their novelty — the distance from the library and the children already kept
    (``diversity.novelty``), so a generation does not spend its compilations on near-copies — plus, with a
    ``predictor`` (the reward model, ``karn.reward``), the score it predicts Urabrask will give them. Parents are
    drawn by rank of their score weighed by their field record (``outcomes``, see ``_population``)."""
    population = _population(view, shapes, outcomes)
    if not population:
        raise KarnError("no design in Urza has a validated kernel for these shapes: nothing to mutate "
                        "(compile the starter library first: `esper karn evolve` does when it can)")
    known = {structure_key(rec.ir) for rec in view.blueprints.values() if rec.ir and "nodes" in rec.ir}
    children: list[Child] = []
    for _ in range(k * attempts):
        if len(children) >= k * pool:
            break
        # the parent first, then the operators best first from a random rank (mostly the best, sometimes the next
        # ones: a generation's children should not all be alike), each tried until one applies to this parent and
        # makes something new: an operator that does not fit a parent (no gate to remove) costs no try
        parent = _pick(population, rng)
        ranked = policy.ranked(rng, parent_context(parent.doc))
        start = min(int(rng.expovariate(1.5)), len(ranked) - 1)
        for operator in ranked[start:] + ranked[:start]:
            parents = [parent]
            if operator == "crossover":
                parents.append(_pick(population, rng))
                if parents[0].blueprint_id == parents[1].blueprint_id:
                    continue
            child = mutate(operator, parents, rng)
            if child is None or not fits(child.blueprint, shapes):
                continue
            key = structure_key(child.blueprint.doc)
            if key in known:
                continue
            known.add(key)
            children.append(child)
            break
    library = [rec.ir for rec in view.blueprints.values() if rec.ir and "nodes" in rec.ir]
    return select(children, library, k, predictor, novelty_weight)


def fits(bp: Blueprint, shapes) -> bool:
    """Whether ``bp`` instantiates and validates at every seed shape it would be compiled for (a child whose
    attention heads do not divide a 2-wide chunk is not worth a compilation that must fail)."""
    from esper_runtime.blueprints.exceptions import BlueprintInvalid
    from esper_runtime.blueprints.validate import validate_concrete

    try:
        for width, d in shapes:
            if bp.reads_input and d is None:
                continue
            validate_concrete(bp.instantiate(width, d if bp.reads_input else None))
    except BlueprintInvalid:
        return False
    return True


def select(candidates: list[Child], library: list[dict], k: int, predictor=None,
           novelty_weight: float = 0.5) -> list[Child]:
    """Greedy: each pick the candidate with the highest predicted score (0 without a predictor) plus
    ``novelty_weight`` × its distance from the library and the picks so far. The prediction is kept on the child
    (``Child.predicted``) for the report."""
    from esper_runtime.karn.diversity import novelty, signature

    predicted = dict(zip(map(id, candidates), predictor.predict([c.blueprint.doc for c in candidates])
                         if predictor is not None and candidates else [0.0] * len(candidates)))
    others = [signature(doc) for doc in library]
    left, picked = list(candidates), []
    while left and len(picked) < k:
        best = max(left, key=lambda c: predicted[id(c)] + novelty_weight * novelty(c.blueprint.doc, others))
        left.remove(best)
        picked.append(dataclasses.replace(best, predicted=predicted[id(best)] if predictor is not None else None))
        others.append(signature(best.blueprint.doc))
    return picked


def evolve(bb, shapes, opts: EvolveOptions, echo: Callable[[str], None] = print, progress=None) -> dict:
    """Run ``opts.generations`` generations against Urza on ``bb``'s log for the seed ``shapes``; the report."""
    from esper_runtime.karn.lineage import field_outcomes, read_field_reports
    from esper_runtime.run.library import ensure_library
    from esper_runtime.urza.library import load_view, submit_blueprint
    from streams.envelope import EnvelopeFactory

    shapes = sorted({s if isinstance(s, tuple) else (s, None) for s in shapes}, key=lambda s: (s[0], s[1] or 0))
    ensure_library(bb, shapes, echo, progress)  # the starter library is the first population
    rng = random.Random(opts.seed)
    envs = EnvelopeFactory(f"karn-{uuid.uuid4().hex[:6]}", PRODUCER)
    generations, designs = [], []
    started = time.monotonic()
    writer = _Writer.start(bb, opts, echo) if opts.generated else None
    with Workers(bb, sorted({f for f, _ in shapes})) as workers:
        for g in range(1, opts.generations + 1):
            t0 = time.monotonic()
            view = load_view(bb)
            outcomes = field_outcomes(read_field_reports(bb))
            policy = OperatorPolicy.from_view(view, shapes, opts.exploration, outcomes)
            predictor, model_report = _reward_model(view, shapes, opts, echo, g)
            children = propose(view, shapes, opts.per_generation, rng, policy, opts.attempts,
                               predictor=predictor, novelty_weight=opts.novelty_weight, outcomes=outcomes)
            generator_report = None
            if writer is not None:
                written, generator_report = writer.generation(view, shapes, rng, predictor, g)
                children += written
            if not children:
                echo(f"generation {g}: no new design passed the checks in {opts.per_generation * opts.attempts} tries")
                generations.append({"generation": g, "submitted": 0, "reward_model": model_report,
                                    "generator": generator_report})
                continue
            parent_scores = {p: design_score(view, p, shapes, reads_input(view.blueprints[p].ir))
                             for c in children for p in c.parent_ids}
            with bb.publisher() as pub:
                for child in children:
                    bp = child.blueprint
                    widths = sorted({f for f, d in shapes if d is not None or not bp.reads_input})
                    inputs = sorted({d for _, d in shapes if d is not None}) if bp.reads_input else []
                    submit_blueprint(pub, envs, bp, PRODUCER, widths=tuple(widths), pipelines=("fast",),
                                     input_widths=tuple(inputs), parent_ids=child.parent_ids,
                                     mutation=child.operator)
            echo(f"generation {g}: {len(children)} designs submitted ("
                 + ", ".join(f"{c.blueprint.name} = {c.operator}" for c in children) + ")")
            ids = [c.blueprint.blueprint_id for c in children]
            readers = {c.blueprint.blueprint_id for c in children if c.blueprint.reads_input}
            wait_settled(bb, ids, readers, shapes, workers, progress, opts.timeout_s,
                         label=f"generation {g}: designs compiled and measured")
            view = _until_scored(bb, children, shapes)
            rows = []
            for child in children:
                bp = child.blueprint
                score = design_score(view, bp.blueprint_id, shapes, bp.reads_input) or 0.0
                parents = [parent_scores[p] or 0.0 for p in child.parent_ids]  # none for a written design
                validated = [s for s in shapes if (not bp.reads_input or s[1] is not None)
                             and library_status(view, [bp.blueprint_id], *s, readers).validated]
                rows.append({"blueprint_id": bp.blueprint_id, "name": bp.name, "mutation": child.operator,
                             "parents": list(child.parent_ids), "generation": g, "score": round(score, 4),
                             "parents_score": round(sum(parents) / len(parents), 4) if parents else None,
                             "predicted_score": None if child.predicted is None else round(child.predicted, 4),
                             "validated_shapes": len(validated), "params_at_first_shape": _params(bp, shapes)})
            designs.extend(rows)
            seconds = time.monotonic() - t0
            summary = _summary(rows)
            generations.append({"generation": g, "submitted": len(rows), **summary, "seconds": round(seconds, 1),
                                "operators": dict(Counter(r["mutation"] for r in rows)),
                                "library_diversity": round(_library_diversity(view, shapes), 4),
                                "reward_model": model_report, "generator": generator_report})
            mutated = "" if summary["children_mean_score"] is None else (
                f"; mutated children's mean score {summary['children_mean_score']:.3f} (parents "
                f"{summary['parents_mean_score']:.3f})")
            echo(f"generation {g}: {summary['validated']}/{len(rows)} validated{mutated}; {seconds:.0f} s")
    elapsed = time.monotonic() - started
    total = _summary(designs) if designs else {}
    view = load_view(bb)
    policy = OperatorPolicy.from_view(view, shapes, opts.exploration)
    return {
        "command": "karn evolve",
        "shapes": [list(s) for s in shapes],
        "generations": generations,
        "designs": designs,
        "stage1": {"children_mean_score": total.get("children_mean_score"),
                   "parents_mean_score": total.get("parents_mean_score"),
                   "met": total.get("children_mean_score") is not None
                   and total["children_mean_score"] > total["parents_mean_score"],
                   "criterion": "mutated children's mean Urabrask score above their parents' (appendix G stage 1)"},
        "stage0": writer.stage0 if writer is not None else None,
        "stage2": _stage2(generations, designs) if writer is not None else None,
        "validated": total.get("validated", 0),
        "submitted": len(designs),
        "operators": {op: {"children": policy.counts.get(op, 0),
                           "mean_score": None if policy.mean(op) is None else round(policy.mean(op), 4)}
                      for op in OPERATORS},
        "reward_model": _prospective(designs),
        "seconds": round(elapsed, 1),
        "seconds_per_design": round(elapsed / len(designs), 1) if designs else None,
        "designs_per_hour": round(3600 * len(designs) / elapsed, 1) if designs and elapsed else None,
        "score": "Urabrask's: mean over the shapes of 1 - risk_score of the design's best validated kernel, "
                 "0 where it has none",
    }


class _Writer:
    """Karn's generator in the loop (``karn.generator``): stage 0 once (imitating the human library; the model is
    saved under ``$ESPER_HOME/karn/generator``), then each generation stage 2 — the slow loop (REINFORCE on
    Urabrask's score of every design the generator wrote that is on the log), the fast loop (``guided``: the
    static checks) from conditions between the best designs' contexts — and ``opts.generated`` of the designs it
    found, chosen as mutated children are (``select``: predicted score + novelty)."""

    def __init__(self, model, human: list[dict], opts: EvolveOptions, echo, stage0: dict):
        self.model, self.human, self.opts, self.echo, self.stage0 = model, human, opts, echo, stage0

    @classmethod
    def start(cls, bb, opts: EvolveOptions, echo) -> "_Writer":
        from esper_runtime.blueprints.library import starter_blueprints
        from esper_runtime.karn.generator import imitate, save_generator

        human = [bp.doc for bp in starter_blueprints()]
        echo(f"generator: stage 0, imitating the {len(human)} designs of the human library")
        im = imitate(human, steps=opts.generator_steps, seed=opts.seed)
        save_generator(im.model, bb.settings.home / "karn" / "generator", im.report)
        held = im.report["held_out"]
        echo(f"generator: writes back {im.report['reconstruction_exact']:.0%} of the library exactly (tokens "
             f"{im.report['token_accuracy']:.0%}); of designs held out, {held['exact']:.0%} exactly and "
             f"{held['valid']:.0%} valid")
        return cls(im.model, human, opts, echo, im.report)

    def generation(self, view, shapes, rng: random.Random, predictor, g: int) -> tuple[list[Child], dict]:
        from esper_runtime.blueprints.exceptions import BlueprintInvalid
        from esper_runtime.karn.generator import Sampled, canonical_key, context, encode, guided, reinforce
        from esper_runtime.karn.mutate import check_child

        episodes, known = [], set()
        for rec in view.blueprints.values():
            if not rec.ir or "nodes" not in rec.ir:
                continue
            try:
                known.add(canonical_key(rec.ir))
                if rec.mutation == GENERATED:
                    score = design_score(view, rec.blueprint_id, shapes, reads_input(rec.ir))
                    if score is not None:
                        episodes.append((Sampled(encode(rec.ir), context(rec.ir), rec.ir), score))
            except (BlueprintInvalid, KeyError, TypeError):  # a stored design this version cannot read
                continue
        # a few designs' scores are a weak signal: gentler steps than the fast loop's, and only from four on
        slow = reinforce(self.model, episodes, self.human, steps=2, lr=5e-4, seed=self.opts.seed + g) \
            if len(episodes) >= 4 else {"episodes": len(episodes), "updated": False}
        contexts = [context(bp.doc) for _, bp in _population(view, shapes)[:8]] or [context(d) for d in self.human]

        def check(doc: dict) -> None:
            if not fits(check_child(doc, []), shapes):
                raise BlueprintInvalid("shapes", "does not build at every seed shape of the run")

        found, rounds = guided(self.model, contexts, self.human, known, check, rng,
                               iterations=self.opts.generator_rounds, per_iteration=self.opts.generator_samples)
        candidates = [Child(Blueprint.parse(f.doc), GENERATED, ()) for f in found]
        library = [rec.ir for rec in view.blueprints.values() if rec.ir and "nodes" in rec.ir]
        chosen = select(candidates, library, self.opts.generated, predictor, self.opts.novelty_weight)
        first, evaluation = rounds[0], rounds[-1]
        self.echo(f"generation {g}: the generator wrote {sum(r['written'] for r in rounds)} designs in "
                  f"{len(rounds) - 1} rounds and an evaluation; new ones passing the static checks "
                  f"{first['checked_share_of_new']} in the first round, {evaluation['checked_share_of_new']} in the "
                  f"evaluation; {len(found)} distinct found, {len(chosen)} submitted")
        return chosen, {"slow_loop": slow, "rounds": rounds, "found": len(found),
                        "chosen": [c.blueprint.name for c in chosen]}


def _stage2(generations: list[dict], designs: list[dict]) -> dict:
    """Appendix G stage 2 over the run: of the new designs the generator wrote in each generation's evaluation
    (after its fast loop, at temperature 1, no step taken), the share that passed the static checks — beside the
    same share in each generation's first round; of those submitted, the share Urabrask validated."""
    reports = [gen["generator"] for gen in generations if gen.get("generator") and gen["generator"]["rounds"]]
    first = [r["rounds"][0] for r in reports]
    last = [r["rounds"][-1] for r in reports]  # the evaluation

    def share(rounds):
        new = sum(r["new"] for r in rounds)
        return round(sum(r["new_and_checked"] for r in rounds) / new, 4) if new else None

    rows = [d for d in designs if d["mutation"] == GENERATED]
    validated = sum(1 for d in rows if d["validated_shapes"])
    static, measured = share(last), round(validated / len(rows), 4) if rows else None
    return {"checked_share_of_new": {"first_rounds": share(first), "evaluations": static},
            "submitted": len(rows), "validated": validated, "validated_share": measured,
            "mean_score": round(sum(d["score"] for d in rows) / len(rows), 4) if rows else None,
            "met": static is not None and measured is not None and static >= 0.8 and measured >= 0.8,
            "criterion": "appendix G stage 2: new designs that consistently pass Tezzeret's static checks (here: "
                         "at least 80 % of the new designs written in the generations' evaluations) and whose "
                         "kernels Urabrask validates (at least 80 % of those submitted)"}


def _reward_model(view, shapes, opts: EvolveOptions, echo, generation: int):
    """This generation's reward model, refitted from the log (Urabrask's scores of every settled design), and
    its report; (None, report) when Karn goes without one (switched off, too few designs, no better than
    chance on designs held out)."""
    from esper_runtime.karn.reward import fit_best, urabrask_samples

    if not opts.reward_model:
        return None, {"used": False, "reason": "switched off"}
    fitted, report = fit_best(urabrask_samples(view, shapes), "urabrask", seed=opts.seed + generation)
    report["used"] = fitted is not None
    if fitted is None:
        echo(f"generation {generation}: no reward model ({report['reason']}); candidates chosen by novelty")
    else:
        echo(f"generation {generation}: reward model {report['chosen']} (held-out Kendall tau "
             f"{report['models'][report['chosen']]['kendall_tau']:.2f} over {report['samples']} designs)")
    return fitted, report


def _prospective(designs: list[dict]) -> dict:
    """How the reward model did on the designs it chose, before they were compiled: Kendall's tau between its
    prediction and Urabrask's score, and the mean of each."""
    from esper_runtime.karn.reward import kendall_tau

    rows = [d for d in designs if d.get("predicted_score") is not None]
    if not rows:
        return {"designs": 0}
    tau = kendall_tau([d["predicted_score"] for d in rows], [d["score"] for d in rows])
    return {"designs": len(rows), "kendall_tau": None if tau is None else round(tau, 4),
            "mean_predicted": round(sum(d["predicted_score"] for d in rows) / len(rows), 4),
            "mean_score": round(sum(d["score"] for d in rows) / len(rows), 4),
            "criterion": "prediction made before the design was compiled, against Urabrask's score after"}


def _library_diversity(view, shapes) -> float:
    """Mean pairwise structural distance of the designs Urza offers for these shapes."""
    from esper_runtime.karn.diversity import diversity

    return diversity(bp.doc for _, bp in _population(view, shapes))


def _until_scored(bb, children, shapes, timeout_s: float = 60.0):
    """The view once every child has a score (tags arrive with VALIDATED; this waits out the fold's lag)."""
    from esper_runtime.urza.library import load_view

    deadline = time.monotonic() + timeout_s
    while True:
        view = load_view(bb)
        if all(design_score(view, c.blueprint.blueprint_id, shapes, c.blueprint.reads_input) is not None
               for c in children) or time.monotonic() > deadline:
            return view
        time.sleep(1)


def _params(bp: Blueprint, shapes) -> int | None:
    """Parameters at the first shape the design instantiates at (None: at none of them)."""
    from esper_runtime.blueprints.exceptions import BlueprintInvalid
    from esper_runtime.blueprints.validate import param_count

    for width, d in shapes:
        if bp.reads_input and d is None:
            continue
        try:
            return param_count(bp.instantiate(width, d if bp.reads_input else None))
        except BlueprintInvalid:
            continue
    return None


def _summary(rows: list[dict]) -> dict:
    """Validated designs; the mutated children's mean score against their parents' (stage 1; None without any)."""
    mutated = [r for r in rows if r["parents_score"] is not None]
    return {"validated": sum(1 for r in rows if r["validated_shapes"]),
            "children_mean_score": round(sum(r["score"] for r in mutated) / len(mutated), 4) if mutated else None,
            "parents_mean_score": round(sum(r["parents_score"] for r in mutated) / len(mutated), 4) if mutated
            else None}




FIELD_ARMS = {"karn_designs": True, "karn_first": "prefer", "people_only": False}  # tamiyo.karn_designs per arm


def field_trial(bb, prep, seeds: int, echo: Callable[[str], None] = print) -> dict:
    """Appendix G's field stage: for each random seed, the run's grown host trained in three arms
    (``tamiyo.karn_designs``): Karn's designs offered beside the library people wrote (``karn_designs``: Tamiyo
    takes what her rule ranks first, whoever wrote it), Karn's designs first among those reading the same input
    (``karn_first``: a trial of Karn's designs where Tamiyo grows), and the library people wrote only
    (``people_only``, the control). Reported: each arm's final accuracy and parameters (mean ± population std over
    seeds), its paired difference against the control, and how the designs did where they were grafted (the
    ``FieldReport`` events of those runs, split by who wrote the design: FOSSILIZED / germinated, mean reward)."""
    import statistics

    from esper_runtime.karn.lineage import field_outcomes, read_field_reports
    from esper_runtime.run.pipeline import _grown, _train
    from esper_runtime.tolaria.trainer import count_params
    from esper_runtime.urza.library import load_view
    from esper_runtime.urza.store import ArtifactStore

    view = load_view(bb)
    record = field_outcomes(read_field_reports(bb))  # what runs before the trial saw, for every arm alike
    store = ArtifactStore(bb.settings.artifacts)
    runs: dict[str, list[dict]] = {arm: [] for arm in FIELD_ARMS}
    with bb.run_publisher() as publisher:
        for seed in range(seeds):
            for arm, allowed in FIELD_ARMS.items():
                esper = prep.cfg.esper
                cfg = prep.cfg.model_copy(update={"esper": esper.model_copy(update={
                    "tamiyo": esper.tamiyo.model_copy(update={"karn_designs": allowed})})})
                run_id = f"{prep.cfg.name}-karn-field-{arm.replace('_', '-')}-{uuid.uuid4().hex[:6]}-s{seed}"
                model, _, trainer = _grown(dataclasses.replace(prep, cfg=cfg), seed, run_id, store, view, publisher,
                                           None, field_record=record)
                _, history = _train(trainer)
                runs[arm].append({"seed": seed, "run_id": run_id, "accuracy": history.epochs[-1]["val_accuracy"],
                                  "params": count_params(model)})
                echo(f"field seed {seed}, {arm.replace('_', ' ')}: accuracy {runs[arm][-1]['accuracy']:.3f} "
                     f"({runs[arm][-1]['params']} params)")
    karn_ids = {rec.blueprint_id for rec in view.blueprints.values() if rec.mutation}
    reports = read_field_reports(bb)

    def outcomes(arm: str, karn: bool, made_by: str | None = None) -> dict:
        ids = {r["run_id"] for r in runs[arm]}
        rows = [r for r in reports if r["envelope"]["run_id"] in ids and (r["blueprint_id"] in karn_ids) == karn]
        if made_by is not None:  # Karn's designs by how they were made: mutated, or written by the generator
            rows = [r for r in rows if (view.blueprints[r["blueprint_id"]].mutation == GENERATED) == (
                made_by == "generated")]
        rewards = [r["reward"] for r in rows if r.get("reward") is not None]
        fossilized = sum(1 for r in rows if r["outcome"] == "FOSSILIZED")
        return {"germinated": len(rows), "fossilized": fossilized,
                "success_rate": round(fossilized / len(rows), 4) if rows else None,
                "mean_reward": round(statistics.fmean(rewards), 4) if rewards else None,
                "designs": sorted({view.blueprints[r["blueprint_id"]].name for r in rows
                                   if r["blueprint_id"] in view.blueprints})}

    def stats(arm: str) -> dict:
        acc, params = [r["accuracy"] for r in runs[arm]], [r["params"] for r in runs[arm]]
        return {"accuracy_mean": round(statistics.fmean(acc), 4),
                "accuracy_std": round(statistics.pstdev(acc), 4) if len(acc) > 1 else 0.0,
                "params_mean": round(statistics.fmean(params), 1),
                "params_std": round(statistics.pstdev(params), 1) if len(params) > 1 else 0.0,
                "paired_difference_mean": round(statistics.fmean(
                    a["accuracy"] - b["accuracy"] for a, b in zip(runs[arm], runs["people_only"])), 4),
                "params_paired_difference_mean": round(statistics.fmean(
                    a["params"] - b["params"] for a, b in zip(runs[arm], runs["people_only"])), 1),
                "field": {"karn": outcomes(arm, True), "people": outcomes(arm, False),
                          "karn_mutated": outcomes(arm, True, "mutated"),
                          "karn_generated": outcomes(arm, True, "generated")},
                "runs": runs[arm]}

    return {"seeds": seeds, "epochs": prep.cfg.esper.tolaria.epochs, **{arm: stats(arm) for arm in FIELD_ARMS},
            "paired_difference": "arm minus people_only, same seed: final validation accuracy"}
