import json
import subprocess
import sys


def test_dormant_overhead_bench_prints_ratios_per_model():
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "bench", "dormant-overhead", "--json",
                          "--rounds", "2", "--max-rounds", "2", "--steps", "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["bench"] == "dormant-overhead"
    models = ("mlp", "cnn", "mlp_run", "cnn_run")  # the library's defaults, and esper run's
    for model in models:
        assert result[model]["ratio"] > 0 and result[model]["seeds"] > 0
    assert result["ratio"] == max(result[m]["ratio"] for m in models)
    # the measurement's own spread beside the ratio, and whether the rounds brought it under 0.01
    assert result["aa_spread"] == max(result[m]["aa_spread"] for m in models) >= 0
    # esper run's configuration samples a 500-step epoch samples_per_epoch times
    assert result["mlp_run"]["sample_every"] == max(result["run_stats_every"], 500 // result["run_samples_per_epoch"])
    assert all(result[m]["rounds"] == 2 and isinstance(result[m]["aa_spread_met"], bool) for m in models)
    # what one sampled step costs (every step sampled, the same rounds), beside the library's ratio it explains
    assert all(isinstance(result[m]["sample_ms"], float) for m in ("mlp", "cnn"))


def test_blend_bench_reports_bandwidth_against_copy_on_the_device_asked_for():
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "bench", "blend", "--json", "--rows", "256",
                          "--features", "512"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["bench"] == "blend" and result["device"] == "cpu" and result["kernel"] == "eager"
    assert result["hardware"].startswith("cpu_") and result["seeds"] == 8 and result["blending_share"] == 0.75
    assert result["copy_gb_per_s"] > 0 and result["blend_gb_per_s"] > 0
    assert abs(result["blend_over_copy"] - result["blend_gb_per_s"] / result["copy_gb_per_s"]) < 0.05


def test_a_device_the_machine_lacks_is_a_clear_error_not_a_cpu_figure():
    import torch

    if torch.cuda.is_available():
        return  # this machine has the device: nothing to refuse
    for bench in ("blend", "kernel-load", "dormant-overhead"):
        res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "bench", bench, "--json", "--device",
                              "cuda"], capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and "no CUDA device" in res.stderr, (bench, res.stderr[-500:])
        assert res.stdout.strip() == ""
