"""bench/open_set.py's digits part, tiny: a one-epoch LeNet on a few hundred real MNIST digits 0-4
gives every score a figure, and the printed table carries them all."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

from cnnkit.confidence import TEMPERATURE_RANGE

BENCH = Path(__file__).resolve().parents[1] / "bench" / "open_set.py"


def open_set_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("open_set_bench", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_digits_open_set_bench_scores_every_score(shared_data: Path, tmp_path: Path) -> None:
    bench = open_set_bench()
    sizes = bench.Sizes(train_per_class=60, val_per_class=20, test_per_class=20, near_per_class=20, far=60, epochs=1)
    lines: list[str] = []
    result = bench.digits_benchmark(shared_data, tmp_path, sizes, seeds=[0], say=lines.append)
    assert len(lines) == 1 and lines[0].startswith("digits seed 0")
    [(protocol, per_score)] = result.scores.items()
    assert protocol == "set on val, judged on test"
    expected = {"msp (T=1)", "msp (fitted T)", "energy (T=1)", "energy (fitted T)", *bench.COMBINED,
                *(f"knn mean of top {k}" for k in bench.KNN_MEAN_KS)}  # fmt: skip
    assert expected <= set(per_score)
    for score, metrics in per_score.items():
        assert set(metrics) == set(bench.METRICS), score
        for metric, values in metrics.items():
            assert len(values) == 1 and 0.0 <= values[0] <= 1.0, (score, metric, values)
    calibration = result.calibration[protocol]
    assert TEMPERATURE_RANGE[0] <= calibration["T"][0] <= TEMPERATURE_RANGE[1]
    assert all(0.0 <= calibration[what][0] <= 1.0 for what in ("accuracy", "ECE before", "ECE after", "msp = 1.0"))
    table = bench.table("digits", result)
    for score in per_score:
        assert score in table
    assert not any(math.isnan(v[0]) for m in per_score.values() for v in m.values())
