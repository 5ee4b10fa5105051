"""Review finding (issue 11): eval_map's report files and training's metrics.csv (on resume) were
rewritten in place: a crash or full disk mid-write lost the previous content. Writes are atomic."""
from __future__ import annotations

import csv

import numpy as np
import pytest


class _DiskFull(OSError):
    pass


def _failing_csv_writer(monkeypatch, after_rows: int) -> None:
    """csv.writer whose writes fail after ``after_rows`` rows (as a full disk would)."""
    real = csv.writer

    def writer(f, *args, **kwargs):
        inner = real(f, *args, **kwargs)
        count = [0]

        class Failing:
            def writerow(self, row):
                count[0] += 1
                if count[0] > after_rows:
                    raise _DiskFull(28, "No space left on device")
                return inner.writerow(row)

            def writerows(self, rows):
                for row in rows:
                    self.writerow(row)
        return Failing()

    monkeypatch.setattr(csv, "writer", writer)


def test_metrics_csv_survives_a_failure_while_resume_rewrites_it(tmp_path, monkeypatch):
    from training.train import ScalarLog

    path = tmp_path / "metrics.csv"
    rows = "".join(f"{s},0,loss,{1.0 / s:.6f}\n" for s in range(1, 201))
    path.write_text("step,epoch,tag,value\n" + rows)
    before = path.read_text()
    _failing_csv_writer(monkeypatch, after_rows=3)
    with pytest.raises(_DiskFull):
        ScalarLog(tmp_path, enabled=True, start_step=100)
    assert path.read_text() == before
    monkeypatch.undo()
    log = ScalarLog(tmp_path, enabled=True, start_step=100)
    log.close()
    assert path.read_text().splitlines()[-1].startswith("100,")


def test_eval_map_report_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
    from qaa_vpr_ros.map_tools.evaluate import EvalResult, write_report

    result = EvalResult(num_queries=10, num_with_positive=9, radius_m=25.0, recall_at_k={1: 0.5, 5: 0.8, 10: 0.9},
                        thresholds=np.linspace(1, 0, 50), precision=np.ones(50), recall=np.linspace(0, 1, 50),
                        recall_at_100_precision=1.0, threshold_at_100_precision=0.0)
    write_report(result, tmp_path, "first")
    before = {name: (tmp_path / name).read_text() for name in ("recall_at_k.csv", "pr_curve.csv", "summary.json")}
    _failing_csv_writer(monkeypatch, after_rows=2)
    with pytest.raises(_DiskFull):
        write_report(result, tmp_path, "second")
    for name, text in before.items():
        assert (tmp_path / name).read_text() == text, name
    assert not [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
