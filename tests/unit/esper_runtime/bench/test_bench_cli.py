import json
import subprocess
import sys


def test_dormant_overhead_bench_prints_ratios_per_model():
    res = subprocess.run([sys.executable, "-m", "esper_runtime.cli.main", "bench", "dormant-overhead", "--json",
                          "--rounds", "2", "--max-rounds", "2", "--steps", "2"], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout.strip().splitlines()[-1])
    assert result["bench"] == "dormant-overhead"
    for model in ("mlp", "cnn"):
        assert result[model]["ratio"] > 0 and result[model]["seeds"] > 0
    assert result["ratio"] == max(result["mlp"]["ratio"], result["cnn"]["ratio"])
    # the measurement's own spread beside the ratio, and whether the rounds brought it under 0.01
    assert result["aa_spread"] == max(result["mlp"]["aa_spread"], result["cnn"]["aa_spread"]) >= 0
    assert all(result[m]["rounds"] == 2 and isinstance(result[m]["aa_spread_met"], bool) for m in ("mlp", "cnn"))
