"""Alert rules evaluated in SQL over the analytics tables (the same ClickHouse the Nissa page reads).

A rule is data: a name, a severity, a query over one run that returns a row per firing, and the message a row
becomes. ``evaluate`` runs every rule for a run and returns the alerts; the REST API (``/api/v1/alerts``), the
Nissa page and ``esper alerts`` all call it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from streams.contracts import SeedState
from streams.lifecycle import IN_PROGRESS, sql_list

__all__ = ["AlertRule", "RULES", "evaluate", "check_run_id"]

_RUN_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def check_run_id(run_id: str) -> str:
    """Run ids go into SQL text: only the characters Esper's ids use are allowed."""
    if not _RUN_ID.match(run_id):
        raise ValueError(f"not a run id: {run_id!r} (letters, digits, . _ : - only)")
    return run_id


@dataclass(frozen=True)
class AlertRule:
    name: str
    severity: str
    doc: str
    sql: str  # with {run} and the rule's parameters
    message: str  # formatted with a result row
    params: tuple[tuple[str, float], ...] = ()


RULES = (
    AlertRule(
        "loss_spike", "critical",
        "Validation loss jumped above `factor` times its minimum over the previous `window` epochs.",
        """SELECT epoch, val_loss, prev_min FROM (
             SELECT epoch, val_loss, min(val_loss) OVER (ORDER BY epoch ROWS BETWEEN {window} PRECEDING
                                                         AND 1 PRECEDING) AS prev_min,
                    row_number() OVER (ORDER BY epoch) AS n
             FROM esper.epochs FINAL WHERE run_id = '{run}')
           WHERE n > 1 AND val_loss > {factor} * prev_min ORDER BY epoch""",
        "epoch {epoch}: validation loss {val_loss:.4f} is over {factor}x the recent minimum {prev_min:.4f}",
        (("window", 5), ("factor", 2.0)),
    ),
    AlertRule(
        "seed_stuck", "warning",
        "A seed has sat in a non-terminal lifecycle state for more than `epochs` epochs.",
        """SELECT layer_id, seed_id, state, since, last - since AS waited FROM (
             SELECT layer_id, seed_id, argMax(to_state, originator_version) AS state,
                    argMax(epoch, originator_version) AS since
             FROM esper.lifecycle_transitions FINAL WHERE run_id = '{run}' GROUP BY layer_id, seed_id) AS s
           CROSS JOIN (SELECT max(epoch) AS last FROM esper.epochs FINAL WHERE run_id = '{run}') AS e
           WHERE state IN """ + sql_list(IN_PROGRESS | {SeedState.ERROR_RECOVERY}) + """
             AND last - since > {epochs} ORDER BY layer_id, seed_id""",
        "seed/{layer_id}/{seed_id} has been {state} since epoch {since} ({waited} epochs)",
        (("epochs", 20),),
    ),
    AlertRule(
        "seeds_culled", "info",
        "More than `share` of the run's finished adaptations were culled.",
        """SELECT countIf(outcome = 'CULLED') AS culled, count() AS finished FROM esper.field_reports FINAL
           WHERE run_id = '{run}' HAVING finished >= 3 AND culled > {share} * finished""",
        "{culled} of {finished} adaptations were culled",
        (("share", 0.5),),
    ),
)


def evaluate(store, run_id: str, rules=RULES, **overrides) -> list[dict]:
    """Every alert firing for ``run_id``: [{rule, severity, message, row}]."""
    run = check_run_id(run_id)
    alerts = []
    for rule in rules:
        params = {k: overrides.get(f"{rule.name}.{k}", v) for k, v in rule.params}
        for row in store.rows(rule.sql.format(run=run, **params)):
            values = {k: _number(v) for k, v in row.items()}
            shown = {k: _NOT_FINITE if v is None else v for k, v in values.items()}
            alerts.append({"rule": rule.name, "severity": rule.severity,
                           "message": rule.message.format(**shown, **params), "row": values})
    return alerts


class _NotFinite:
    """How a message shows a value ClickHouse returned as null (an infinite or NaN loss), whatever its format."""

    def __format__(self, spec: str) -> str:
        return "not finite"


_NOT_FINITE = _NotFinite()


def _number(value):
    if isinstance(value, str):  # ClickHouse's JSON quotes 64-bit integers
        try:
            return int(value)
        except ValueError:
            return value
    return value
