"""The live materialized state, and replay held against it.

``processors_running`` says whether the processors' app for these settings answers (so its state topics are live);
``verify`` compares a replayed run and the replayed Urza library with the compacted state topics the processors
write (``state.kasmina.seeds``, ``state.urza.library``). The processors may still be catching up, so it retries until
the two agree or the timeout passes; whatever still differs then is returned, one line each.
"""

from __future__ import annotations

import json
import time

from streams.backbone import Backbone
from streams.state import read_state_topic
from views.folds import fold_library
from views.run_view import RunView
from views.urza_view import UrzaView

__all__ = ["verify", "processors_status", "processors_running"]


def processors_status(settings) -> dict | None:
    """The status page of the processors' app on ``settings.processors_port`` (127.0.0.1), or None."""
    import urllib.request

    try:
        url = f"http://127.0.0.1:{settings.processors_port}/esper/status/"
        with urllib.request.urlopen(url, timeout=2) as resp:
            return json.loads(resp.read())
    except (OSError, ValueError):
        return None


def processors_running(settings) -> bool:
    """Whether the processors' app for these settings (its topic prefix) answers, so its state topics are live."""
    status = processors_status(settings)
    return status is not None and status.get("app_id") == f"{settings.topic_prefix}esper-processors"


def _differences(run: RunView, urza: UrzaView, backbone: Backbone) -> list[str]:
    seeds = read_state_topic(backbone, "state.kasmina.seeds")
    live = {v["seed"]: v for v in seeds.values() if v["run_id"] == run.run_id}
    diffs = []
    for seed in sorted(set(live) | set(run.seed_states)):
        want, got = run.seed_states.get(seed), live.get(seed)
        if want != got:
            diffs.append(f"{seed}: replay {_brief(want)} != live {_brief(got)}")
    entries = read_state_topic(backbone, "state.urza.library")
    live_urza = UrzaView.restore(entries.items(), lambda raw: backbone.serde.decode_typed(raw)).state()
    want_urza = urza.state()
    for part in ("blueprints", "kernels", "versions", "gaps"):
        for key in sorted(set(want_urza[part]) | set(live_urza[part])):
            if want_urza[part].get(key) != live_urza[part].get(key):
                diffs.append(f"urza {part} {key}: replay {_brief(want_urza[part].get(key))} != live "
                             f"{_brief(live_urza[part].get(key))}")
    return diffs


def _brief(value) -> str:
    if isinstance(value, dict) and "state" in value:
        return f"{value['state']} v{value['version']}"
    if isinstance(value, dict) and "status" in value:
        return f"{value['status']}"
    return "absent" if value is None else str(value)[:80]


def verify(backbone: Backbone, run: RunView, timeout: float = 30.0) -> list[str]:
    """Differences between the replayed ``run`` (and the replayed Urza library) and the live materialized state;
    [] when they agree. Waits up to ``timeout`` seconds for the processors to catch up."""
    deadline = time.monotonic() + timeout
    while True:
        diffs = _differences(run, fold_library(backbone), backbone)
        if not diffs or time.monotonic() > deadline:
            return diffs
        time.sleep(1.0)
