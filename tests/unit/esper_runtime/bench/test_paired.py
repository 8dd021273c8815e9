"""The paired-timing helper behind the overhead benches: its A/A spread and its stopping rule."""

from esper_runtime.bench.paired import aa_spread, paired_rounds, ratio


def test_spread_is_the_twins_distance_from_one_or_its_uncertainty_whichever_is_larger():
    assert aa_spread([1.0] * 20) == 0.0
    assert abs(aa_spread([1.05] * 20) - 0.05) < 1e-12  # a biased method: exactly its bias
    noisy = [1.0 + (0.2 if i % 2 else -0.2) for i in range(21)]  # centred on 1, wide
    assert aa_spread(noisy) > 0.1


def test_rounds_are_added_until_the_spread_is_met_and_no_further():
    calls = {"a": 0}

    def steady():
        calls["a"] += 1
        return 1.0

    out = paired_rounds({"ref": lambda: 1.0, "twin": lambda: 1.0, "cand": steady}, "ref", "twin", min_rounds=30,
                        max_rounds=150, block=10)
    assert out["rounds"] == 30 and out["aa_spread_met"] and calls["a"] == 30
    assert ratio(out["times"], "cand", "ref") == 1.0


def test_a_measurement_that_never_settles_stops_at_the_cap_and_says_so():
    values = iter([0.8, 1.2] * 1000)
    out = paired_rounds({"ref": lambda: 1.0, "twin": lambda: next(values)}, "ref", "twin", min_rounds=10,
                        max_rounds=40, block=10)
    assert out["rounds"] == 40 and not out["aa_spread_met"] and out["aa_spread"] > 0.01
