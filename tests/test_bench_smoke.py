"""Smoke test of ``python -m fastconv bench`` (fastconv.bench.main): one small layer, one round.

Speed is never asserted here (that is the benchmarks' job); only that the command runs and
prints the table row of the layer it was asked for.
"""

from __future__ import annotations

import re

import fastconv
from fastconv import bench


def test_bench_main_prints_the_layer_row(capsys):
    threads = fastconv.get_num_threads()
    rc = bench.main(["--layers", "lenet1", "--ops", "fwd", "--strategies", "auto", "--repeat", "1", "--threads", "1",
                     "--no-torch", "--no-textbook", "--no-startup", "--quiet", "--pause", "0", "--block-time", "0.01"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "## conv2d forward" in out
    row = next(line for line in out.splitlines() if line.startswith("| lenet1 "))
    auto_ms = float(row.split("|")[2])  # the "auto ms" column: a measured, positive time
    assert auto_ms > 0
    assert re.search(r"\| conv forward: .*\| not measured", out)  # no torch: the speed target is not judged
    assert fastconv.get_num_threads() == threads  # the thread count is restored


def test_bench_main_rejects_unknown_layer(capsys):
    assert bench.main(["--layers", "nope", "--no-startup"]) == 2
    assert "unknown layer 'nope'" in capsys.readouterr().err


def test_startup_scripts_run_in_a_fresh_process():
    """The start-up measurement's scripts run as ``python -c`` in fresh processes (a relative import pasted into
    them once broke every start-up figure while the rest of the bench ran): the warm-start script runs and
    reports its times.  (The cold-compile script shares its set-up; it is not run here: it compiles everything.)"""
    import os

    res = bench._run_script(bench._WARM_SCRIPT, [], dict(os.environ), 600)
    assert "error" not in res, res
    assert res["total"] > 0 and res["import"] > 0


def test_target_figures_show_which_side_of_the_threshold_they_are():
    """A geomean of 1.246 against 1.25 is printed with the digits that show it is below (not as "1.25" next to
    MISSED); figures far from the threshold keep two decimals."""
    assert bench._fmt_against(1.2459, 1.25) == "1.246"
    assert bench._fmt_against(1.2499996, 1.25) == "1.2499996"  # (six decimals still round up: the full value)
    assert bench._fmt_against(1.25, 1.25) == "1.25"
    assert bench._fmt_against(1.2512, 1.25) == "1.25"
    assert bench._fmt_against(0.97, 1.25) == "0.97"
    assert bench._fmt_against(3.999, 4.0) == "3.999"
