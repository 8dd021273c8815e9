"""The pure folds of the log: what every reader (replay, the processors' agents, the API, Tamiyo, Simic) builds its
state with, so they agree by construction. No torch, no faust: a view depends on ``streams`` alone.

- ``seed_state.fold_seed`` — a seed's lifecycle state, one version at a time
- ``run_view.RunView`` — one run: seeds, epochs, decisions, outcomes, its story
- ``urza_view.UrzaView`` — the Urza library: blueprints, kernels, status, tags, lineage
- ``folds`` — the log folded into those views (``fold_run``, ``fold_runs``, ``fold_library``, ``last_versions``)
- ``live`` — the processors' materialized state, and a replay held against it (``verify``)
"""

from views.folds import RUN_TOPICS, fold_library, fold_run, fold_runs, last_versions
from views.run_view import RunView
from views.seed_state import APPLIED, DUPLICATE, GAP, fold_seed, seed_key
from views.urza_view import URZA_TOPICS, UrzaView

__all__ = ["RUN_TOPICS", "URZA_TOPICS", "APPLIED", "DUPLICATE", "GAP", "RunView", "UrzaView", "fold_library",
           "fold_run", "fold_runs", "fold_seed", "last_versions", "seed_key"]
