"""Urabrask: verdicts from a real sandbox process, tags against peers, and the events it writes."""

import io
import zipfile

import pytest
import torch

from esper_runtime.blueprints import starter_blueprints
from esper_runtime.tezzeret.compiler import BUNDLE_KIND, compile_ir
from esper_runtime.urabrask.tagging import BOOTSTRAP_POPULATION, Distributions, assign_tags
from esper_runtime.urabrask.worker import UrabraskWorker, run_sandbox
from esper_runtime.urza import ArtifactStore
from streams import InMemoryPublisher, SingleObjectSerde
from streams.contracts import KernelCompiled
from streams.envelope import EnvelopeFactory
from streams.replay import MemorySource, ReplayReader


@pytest.fixture(scope="module")
def bundles():
    bp = next(b for b in starter_blueprints() if b.name == "fixed_tanh")
    return compile_ir(bp.instantiate(8), "fast"), compile_ir(bp.instantiate(16), "fast")


def _report(latency, memory, drift=1e-8, spread=0.05, p99=None, params=10):
    return {"latency_ms_mean": latency, "latency_ms_p99": p99 or latency * 1.5, "memory_mb_peak": memory,
            "precision_drift_vs_fp32": drift, "spread": {"latency_ms_mean": spread}, "params": params}


def test_a_real_kernel_passes_the_sandbox_with_repeatable_measurements(bundles):
    good = bundles[0]
    first = run_sandbox(good.data, good.artifact_id, good.sha256)
    second = run_sandbox(good.data, good.artifact_id, good.sha256)
    assert first["passed"] and second["passed"], first
    assert first["precision_drift_vs_fp32"] < 1e-5 and first["runs"] == 3
    assert 0 < first["latency_ms_mean"] <= first["latency_ms_p99"]
    assert first["memory_mb_peak"] > 0 and first["device"] == "cpu" and "power_watts_avg" not in first
    # repeat runs agree closely (their spread is reported; medians of two sandboxes within 2x of each other)
    ratio = first["latency_ms_mean"] / second["latency_ms_mean"]
    assert 0.5 < ratio < 2.0 and "latency_ms_mean" in first["spread"]


def test_bad_artifacts_get_a_failed_verdict_not_a_crash(bundles):
    good, other = bundles
    assert "hash mismatch" in run_sandbox(good.data, good.artifact_id, "0" * 64)["failure"]
    assert not run_sandbox(b"not a zip at all", "x", __import__("hashlib").sha256(b"not a zip at all").hexdigest())[
        "passed"]
    # a bundle whose compiled program belongs to another design (width 16 in a width-8 bundle)
    src, alien = zipfile.ZipFile(io.BytesIO(good.data)), zipfile.ZipFile(io.BytesIO(other.data))
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        for item in src.infolist():
            out.writestr(item, alien.read("kernel.pt2") if item.filename == "kernel.pt2" else src.read(item.filename))
    data = buf.getvalue()
    verdict = run_sandbox(data, good.artifact_id, __import__("hashlib").sha256(data).hexdigest())
    assert not verdict["passed"] and verdict["failure"]
    assert "hang" in run_sandbox(good.data, good.artifact_id, good.sha256, timeout=0.01)["failure"]


def test_bootstrap_rules_then_percentiles():
    dist = Distributions()
    first = assign_tags(dist, "cpu", _report(0.01, 0.01))
    assert first.method == "rule-bootstrap" and "high_speed" in first.tags and "low_memory" in first.tags
    for i in range(BOOTSTRAP_POPULATION + 4):
        dist.add("cpu", f"k{i}", {"latency_ms_mean": 0.01 * (i + 1), "memory_mb_peak": 0.1 * (i + 1)})
    fast = assign_tags(dist, "cpu", _report(0.005, 5.0))
    slow = assign_tags(dist, "cpu", _report(1.0, 0.01))
    assert fast.method == "percentile" and fast.population == BOOTSTRAP_POPULATION + 4
    assert "high_speed" in fast.tags and "high_memory" in fast.tags
    assert "low_speed" in slow.tags and "low_memory" in slow.tags
    assert "high_speed" in assign_tags(dist, "gpu", _report(0.01, 0.01)).tags  # peers are per hardware


def test_risk_grows_with_drift_and_instability():
    dist = Distributions()
    calm = assign_tags(dist, "cpu", _report(0.01, 0.01))
    shaky = assign_tags(dist, "cpu", _report(0.01, 0.01, drift=5e-5, spread=0.8, p99=0.05))
    assert calm.risk_score < shaky.risk_score
    assert calm.conf_level == "High" and shaky.conf_level in ("Moderate", "Speculative")
    assert "numerically_stable" in calm.tags and "numerically_stable" not in shaky.tags


def _compiled_event(envs, aid, hardware="cpu"):
    return KernelCompiled(envelope=envs.next(f"kernel/{aid}"), artifact_id=aid, blueprint_id="bp", hardware=hardware,
                          pipeline="fast", toolchain_hash="t", sha256="s", size_bytes=1, uri="u", compile_ms=1.0,
                          signature_json="{}")


def test_worker_events_continue_the_kernels_sequence(tmp_path, catalog):
    store = ArtifactStore(tmp_path)
    for aid in ("good", "bad"):
        store.put(aid, BUNDLE_KIND, aid.encode())
    verdicts = {"good": {"passed": True, **_report(0.01, 0.01), "runs": 3},
                "bad": {"passed": False, "failure": "sandbox exited with status -11"}}
    pub = InMemoryPublisher(SingleObjectSerde(catalog))
    worker = UrabraskWorker(pub, store, sandbox=lambda data, aid, sha: verdicts[aid])
    envs = EnvelopeFactory("tz", "tezzeret")
    for aid in ("good", "bad", "good"):
        worker.handle(_compiled_event(envs, aid))
    events = [e.decoded.typed() for e in ReplayReader(MemorySource(pub.log), pub.serde)
              .events(["urabrask.kernels.reports", "urza.kernels.events"])]
    good = sorted((e for e in events if e.artifact_id == "good"), key=lambda e: e.envelope.originator_version)
    assert [type(e).__name__ for e in good] == ["KernelValidationReport", "KernelTagsAssigned", "KernelStatusChanged"]
    assert [e.envelope.originator_version for e in good] == [2, 3, 4]  # after Tezzeret's KernelCompiled (1)
    assert good[-1].to_status == "VALIDATED"
    bad = [e for e in events if e.artifact_id == "bad"]
    assert bad[-1].to_status == "REJECTED" and "status -11" in bad[-1].reason
    assert worker.stats.skipped == 1  # the second "good" is not measured twice


def test_peers_from_the_distribution_keeper_equal_peers_from_the_urza_view():
    from views.urza_view import UrzaView
    from esper_runtime.urabrask.tagging import distributions_from_state, distributions_from_view
    from streams.synthetic import synthetic_library

    events = [e for _, _, e in synthetic_library(8, seed=3)]
    from_view, _ = distributions_from_view(UrzaView().apply_all(events))
    keeper = {f"{e.hardware}|{e.artifact_id}": {"latency_ms_mean": e.latency_ms_mean, "memory_mb_peak": e.memory_mb_peak}
              for e in events if type(e).__name__ == "KernelValidationReport" and e.passed}
    from_state = distributions_from_state(keeper)
    assert from_state.samples == from_view.samples and from_state.population("cpu") == len(keeper) > 0


def test_a_kernel_built_for_hardware_this_host_lacks_is_left_for_another_worker(tmp_path, catalog, monkeypatch):
    """A CUDA kernel reaching a CPU host's Urabrask is neither measured nor rejected (it is not the kernel's fault):
    it stays unknown here, for a worker on its card."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    store = ArtifactStore(tmp_path)
    store.put("gpu", BUNDLE_KIND, b"gpu")
    measured = []
    pub = InMemoryPublisher(SingleObjectSerde(catalog))
    worker = UrabraskWorker(pub, store, sandbox=lambda data, aid, sha: measured.append(aid) or {"passed": True})
    worker.handle(_compiled_event(EnvelopeFactory("tz", "tezzeret"), "gpu", hardware="h100"))
    published = [r for topic in ("urabrask.kernels.reports", "urza.kernels.events") for r in pub.log.records(topic)]
    assert measured == [] and published == [] and "gpu" not in worker.known and worker.stats.skipped == 1
    assert worker.can_measure("cpu_x86_64") and worker.can_measure("cpu") and not worker.can_measure("a100")


def test_each_kernel_runs_in_a_fresh_child_of_one_server_that_comes_back_when_killed(bundles, tmp_path):
    import os
    import signal

    from esper_runtime.urabrask.worker import SandboxServer, _server

    good = bundles[0]
    assert run_sandbox(good.data, good.artifact_id, good.sha256)["passed"]
    server = _server()
    first_server, first_child = server.proc.pid, server.last_pid
    assert run_sandbox(good.data, good.artifact_id, good.sha256)["passed"]
    assert server.proc.pid == first_server and server.last_pid != first_child  # same server, a new process
    os.kill(server.proc.pid, signal.SIGKILL)  # the server gone between kernels: the next one starts it again
    server.proc.wait()
    assert run_sandbox(good.data, good.artifact_id, good.sha256)["passed"] and server.proc.pid != first_server
    # a child that fails before any verdict is a failed verdict with its exit status; the server goes on
    lone = SandboxServer()
    try:
        assert lone.run(["too", "few"], timeout=60) == 70
        assert lone.run([str(tmp_path / "none"), "x", "0" * 64, 1, 1, str(tmp_path / "v.json"),
                         str(tmp_path / "out")], timeout=60) == 0
        assert "No such file" in (tmp_path / "v.json").read_text()
    finally:
        lone.close()
    assert lone.proc is None
