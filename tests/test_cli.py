"""``python -m fastconv`` (fastconv.cli) and its float64 reference (fastconv._check).

The reference in ``fastconv._check`` is itself checked against the slow loop reference in
``tests/reference.py``; the agreement test is shown to fail on wrong results (a perturbed
output, a broken strategy), so "all agree" means something.
"""

from __future__ import annotations

import dataclasses
import importlib.machinery
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import reference as ref

import fastconv
from fastconv import _check, _registry, cli

# --------------------------------------------------------------------------- the reference in fastconv._check


def test_check_reference_matches_loop_reference():
    """_check's vectorised reference equals tests/reference.py's loops (both float64) on every op."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 4, 9, 8))
    w = rng.standard_normal((6, 2, 3, 2))
    b = rng.standard_normal(6)
    for kw in [
        dict(stride=(2, 1), pad=((1, 0), (2, 1)), dilation=(1, 2), groups=2),
        dict(stride=2, pad="same", dilation=1, groups=2),
        dict(pad="valid", groups=2),
    ]:
        y = _check.conv2d(x, w, **kw, bias=b)
        np.testing.assert_allclose(y, ref.conv2d(x, w, **kw, bias=b), rtol=1e-12, atol=1e-12)
        dy = rng.standard_normal(y.shape)
        for got, want in zip(_check.conv2d_backward(dy, x, w, **kw), ref.conv2d_backward(dy, x, w, **kw), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    wt = rng.standard_normal((4, 3, 3, 2))
    for kw in [
        dict(stride=2, pad=1, output_pad=1, groups=2),
        dict(stride=1, pad=0, output_pad=(1, 0), dilation=2),
        dict(stride=(2, 3), pad="same"),
    ]:
        y = _check.conv_transpose2d(x, wt, **kw)
        np.testing.assert_allclose(y, ref.conv_transpose2d(x, wt, **kw), rtol=1e-12, atol=1e-12)
        dy = rng.standard_normal(y.shape)
        got_all = _check.conv_transpose2d_backward(dy, x, wt, **kw)
        for got, want in zip(got_all, ref.conv_transpose2d_backward(dy, x, wt, **kw), strict=True):
            np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    xp = np.round(rng.standard_normal((2, 3, 9, 10)))  # many ties
    xp[0, 0, 2, 3] = np.nan
    xp[1, 2, :3, :3] = -np.inf
    for kw in [dict(stride=2, pad=1, ceil_mode=True), dict(stride=(1, 2), dilation=(2, 1)), dict(pad=(1, 0))]:
        y, idx = _check.max_pool2d(xp, 3, **kw, return_indices=True)
        y_r, idx_r = ref.max_pool2d(xp, 3, **kw, return_indices=True)
        np.testing.assert_array_equal(y, y_r)
        np.testing.assert_array_equal(idx, idx_r)
        dy = rng.standard_normal(y.shape)
        dx = _check.max_pool2d_backward(dy, xp, 3, **kw)
        np.testing.assert_allclose(dx, ref.max_pool2d_backward(dy, xp, 3, **kw), rtol=1e-12, atol=1e-12)
    for kw in [
        dict(stride=2, pad=1, ceil_mode=True, count_include_pad=False),
        dict(stride=(1, 2), divisor_override=4),
        dict(pad=1, ceil_mode=True),
    ]:
        y = _check.avg_pool2d(x, 3, **kw)
        np.testing.assert_allclose(y, ref.avg_pool2d(x, 3, **kw), rtol=1e-12, atol=1e-12)
        dy = rng.standard_normal(y.shape)
        np.testing.assert_allclose(
            _check.avg_pool2d_backward(dy, x.shape, 3, **kw), ref.avg_pool2d_backward(dy, x.shape, 3, **kw),
            rtol=1e-12, atol=1e-12,
        )
    np.testing.assert_array_equal(_check.im2col(x, (3, 2), 2, 1, (1, 2)), ref.im2col(x, (3, 2), 2, 1, (1, 2)))


def test_agree_accepts_rounding_and_rejects_real_errors():
    """A float32 rounding of the reference agrees; one element off by 1e-3 of the scale does not."""
    case = _check.conv_case("c", (2, 3, 8, 8), (4, 3, 3, 3), pad=1, dtype=np.float32)
    (y_ref,), _ = case.expected()
    good = y_ref.astype(np.float32)
    assert all(a.ok for _, a in _check.compare(case, (good,)))
    bad = good.copy()
    bad[1, 2, 3, 4] += np.float32(1e-3 * np.abs(y_ref).max())
    [(_, a)] = _check.compare(case, (bad,))
    assert not a.ok and a.worst_ratio > 10 and "bound" in a.why
    # wrong shape, NaN where the reference has a number, a swapped max-pool index
    assert not _check.compare(case, (good[:, :, :-1],))[0][1].ok
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    assert not _check.compare(case, (nan,))[0][1].ok
    mp = _check.max_pool_case("m", (1, 2, 6, 6), 2, dtype=np.float64)
    (y, idx), _ = mp.expected()
    idx2 = idx.copy()
    idx2[0, 1, 1, 1] += 1
    assert [a.ok for _, a in _check.compare(mp, (y, idx))] == [True, True]
    assert [a.ok for _, a in _check.compare(mp, (y, idx2))] == [True, False]
    y2 = y.copy()
    y2[0, 0, 0, 0] = np.nextafter(y2[0, 0, 0, 0], np.inf)  # max pooling only selects: exact or wrong
    assert not _check.compare(mp, (y2, idx))[0][1].ok


# --------------------------------------------------------------------------- subcommands


def _lines(text: str) -> list[str]:
    return [ln.rstrip() for ln in text.splitlines()]


def test_info(capsys):
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"fastconv   {fastconv.__version__}" in out
    assert f"numpy      {np.__version__}" in out
    import numba

    assert f"numba      {numba.__version__}" in out
    assert f"threads    {fastconv.get_num_threads()}" in out
    # info runs a tiny parallel kernel, so numba knows its threading layer
    assert re.search(r"threading  numba layer (omp|tbb|workqueue)\b", out), out
    for key in ("BLAS ", "OPENBLAS_CORETYPE=", "SIMD ", "cache "):
        assert key in out, key
    # the BLAS line names the library and, for OpenBLAS, the core type it selected (via threadpoolctl)
    from threadpoolctl import threadpool_info

    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    if blas:
        assert f"{blas[0]['internal_api']} {blas[0]['version']}" in out
        if blas[0]["internal_api"] == "openblas":
            assert f"core {blas[0]['architecture']})" in out
    assert re.search(r"^SIMD       \S+ \(LLVM host CPU \S+\); vector extensions: ", out, re.M), out
    # the numba cache directory: NUMBA_CACHE_DIR if set, else next to the kernel modules
    cache = numba.config.CACHE_DIR or str(Path(fastconv.__file__).parent / "kernels" / "__pycache__")
    assert re.search(rf"^cache      {re.escape(cache)}", out, re.M), out
    for name in fastconv.STRATEGIES:
        assert f"strategy   {name}: " in out


def test_check_reports_every_strategy(capsys):
    code = cli.main(["check", "--quick", "--dtype", "float64", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    n_conv = sum(c.uses_strategy for c in cli.check_cases("float64", quick=True))
    n_pool = sum(not c.uses_strategy for c in cli.check_cases("float64", quick=True))
    assert n_conv > 0 and n_pool > 0
    for name in fastconv.STRATEGIES:
        assert re.search(rf"^{re.escape(name)}\s+{n_conv}/{n_conv} agree$", out, re.M), (name, out)
    assert re.search(rf"^\(pooling\)\s+{n_pool}/{n_pool} agree$", out, re.M), out
    total = n_conv * len(fastconv.STRATEGIES) + n_pool
    assert _lines(out)[-1] == f"OK: all {total} calls agree with the float64 reference"
    assert "FAIL" not in out


def _broken(monkeypatch, name: str) -> None:
    """Make strategy ``name``'s forward primitive wrong by a small amount in one element."""
    strat = _registry.get(name)

    def forward(x, w, geom, out_hw, bias=None):
        y = strat.forward(x, w, geom, out_hw, bias)
        if y.size:
            y.flat[y.size // 2] += 1e-3 * max(float(np.abs(y).max()), 1.0)
        return y

    monkeypatch.setitem(_registry._REGISTRY, name, dataclasses.replace(strat, forward=forward))


@pytest.mark.parametrize("name", fastconv.STRATEGIES)
def test_check_fails_on_a_broken_strategy(monkeypatch, capsys, name):
    _broken(monkeypatch, name)
    code = cli.main(["check", "--quick", "--dtype", "float64", "--strategy", name, "--no-progress"])
    out = capsys.readouterr().out
    assert code == 1
    assert re.search(rf"^FAIL conv2d \[.*\] float64 {re.escape(name)}: y: .*bound", out, re.M), out
    assert re.search(rf"^{re.escape(name)}\s+\d+/\d+ agree  <-- DISAGREES$", out, re.M), out
    assert _lines(out)[-1].startswith("FAILED: ")


def test_check_reports_an_exception_as_a_failure(monkeypatch, capsys):
    name = fastconv.STRATEGIES[0]
    strat = _registry.get(name)

    def forward(x, w, geom, out_hw, bias=None):
        raise RuntimeError("boom")

    monkeypatch.setitem(_registry._REGISTRY, name, dataclasses.replace(strat, forward=forward))
    assert cli.main(["check", "--quick", "--dtype", "float64", "--strategy", name, "--no-progress"]) == 1
    assert "raised RuntimeError: boom" in capsys.readouterr().out


def test_main_job_quick(capsys):
    code = cli.main(["--quick", "--repeat", "1", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = _lines(out)
    assert lines[0].startswith(f"fastconv {fastconv.__version__} | numpy {np.__version__} | numba ")
    assert f"| {fastconv.get_num_threads()} threads | float32 |" in lines[0]
    rows = [ln for ln in lines if ln.endswith("  ok") or ln.endswith("FAIL")]
    cases = cli.layer_cases(quick=True, dtype="float32")
    n_conv = sum(c.uses_strategy for c in cases)
    assert len(rows) == n_conv * len(fastconv.STRATEGIES) + (len(cases) - n_conv)
    for case in cases:
        for st in fastconv.STRATEGIES if case.uses_strategy else ["-"]:
            row = [ln for ln in rows if ln.startswith(case.op + " ") and f"  {case.name}  " in ln and f"  {st}  " in ln]
            assert len(row) == 1, (case.name, st, rows)
    for op in ("conv2d", "conv_transpose2d", "max_pool2d", "avg_pool2d"):
        assert any(ln.startswith(op + " ") for ln in rows)
    assert all(ln.endswith("  ok") for ln in rows)
    assert re.fullmatch(rf"OK: all {len(rows)} results agree with the float64 reference within rounding bounds "
                        r"\(\d+\.\d s\)", lines[-1])


def test_main_job_fails_on_a_broken_strategy(monkeypatch, capsys):
    name = fastconv.STRATEGIES[0]
    _broken(monkeypatch, name)
    assert cli.main(["--quick", "--repeat", "0", "--no-progress", "--strategy", name]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and _lines(out)[-1].startswith("FAILED: ")


def test_main_job_reports_an_exception_as_a_failure(monkeypatch, capsys):
    name = fastconv.STRATEGIES[0]
    strat = _registry.get(name)

    def forward(x, w, geom, out_hw, bias=None):
        raise RuntimeError("boom")

    monkeypatch.setitem(_registry._REGISTRY, name, dataclasses.replace(strat, forward=forward))
    assert cli.main(["--quick", "--repeat", "0", "--no-progress", "--strategy", name]) == 1
    out = capsys.readouterr().out
    assert "raised RuntimeError: boom" in out and _lines(out)[-1].startswith("FAILED: ")


def test_unknown_strategy_is_an_error():
    with pytest.raises(SystemExit, match="unknown strategy nope"):
        cli.main(["check", "--strategy", "nope"])


@pytest.mark.parametrize("argv", [["--help"], ["-h"]] + [[name, "--help"] for name in cli.SUBCOMMANDS])
def test_help(capsys, argv):
    """``--help`` works on the main job and on every subcommand (bench parses its own)."""
    try:
        code = cli.main(argv)
    except SystemExit as exc:
        code = exc.code
    assert code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m fastconv" + (f" {argv[0]}" if len(argv) > 1 else ""))
    assert "--help" in out


def test_every_issue_subcommand_is_registered():
    assert {"info", "check", "bench", "warmup"} <= set(cli.SUBCOMMANDS)


def test_warmup_subcommand(capsys):
    """``python -m fastconv warmup`` compiles (or loads) every kernel of the dtypes; --no-progress is quiet."""
    assert cli.main(["warmup", "--dtypes", "float64", "--no-progress"]) == 0
    out = capsys.readouterr()
    assert out.err == ""
    n = fastconv.warmup("float64")  # the same calls as the subcommand made
    lines = _lines(out.out)
    assert re.fullmatch(rf"warmup: {n} op calls \(float64; every strategy, forward and backward\) in \d+\.\d s; "
                        r"every kernel is compiled or loaded from the numba cache", lines[0]), lines
    assert lines[1].startswith("cache      ")


def test_warmup_subcommand_passes_dtypes_and_shows_a_progress_bar(monkeypatch, capsys):
    seen = []
    real = fastconv.warmup

    def spy(dtypes, *, progress):
        seen.append((dtypes, progress))
        return real(dtypes, progress=progress)

    monkeypatch.setattr(fastconv, "warmup", spy)
    assert cli.main(["warmup", "--dtypes", "float64"]) == 0
    assert cli.main(["warmup", "--dtype", "float32,float64", "--no-progress"]) == 0
    assert seen == [(("float64",), True), (("float32", "float64"), False)]
    out = capsys.readouterr()
    n = real("float64")
    # the bar (tqdm when installed, else fastconv's text bar) ends at n/n on stderr; stdout has the summary only
    assert "warmup" in out.err and f"{n}/{n}" in out.err
    assert f"{n}/{n}" not in out.out


@pytest.mark.parametrize("arg", ["float16", "", "float32,int8"])
def test_warmup_subcommand_rejects_other_dtypes(arg):
    with pytest.raises(SystemExit, match="--dtypes must be a comma-separated subset of float32, float64"):
        cli.main(["warmup", "--dtypes", arg])


def test_unknown_option_is_an_error(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["info", "--bogus"])
    assert exc.value.code == 2
    assert "unrecognized arguments: --bogus" in capsys.readouterr().err


def test_bench_stub_without_bench_module(monkeypatch, capsys):
    real = cli.importlib.util.find_spec
    monkeypatch.setattr(cli.importlib.util, "find_spec", lambda n, *a: None if n == "fastconv.bench" else real(n, *a))
    assert cli.main(["bench"]) == 0
    assert capsys.readouterr().out.strip() == "benchmarks: see `pytest benchmarks --benchmark-only`"


def test_bench_delegates_to_bench_module(monkeypatch):
    seen = []
    fake = types.ModuleType("fastconv.bench")
    fake.main = lambda argv: seen.append(argv) or 3
    monkeypatch.setitem(sys.modules, "fastconv.bench", fake)
    monkeypatch.setattr(fastconv, "bench", fake, raising=False)
    fake.__spec__ = importlib.machinery.ModuleSpec("fastconv.bench", None)
    assert cli.main(["bench", "--help", "--x", "1"]) == 3
    assert seen == [["--help", "--x", "1"]]


def test_progress_writes_steps():
    import io

    s = io.StringIO()
    p = cli.Progress(2, stream=s)
    p.step("a")
    p.step("b")
    p.done()
    assert s.getvalue() == "[1/2] a\n[2/2] b\n"


def test_python_dash_m_runs():
    """``python -m fastconv`` reaches cli.main (and its exit code comes back)."""
    proc = subprocess.run([sys.executable, "-m", "fastconv", "--help"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("usage: python -m fastconv")
    proc = subprocess.run([sys.executable, "-m", "fastconv", "--bogus"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2


# --------------------------------------------------------------------------- documentation examples

_DOCS = ["README.md", "docs/api.md", "docs/semantics.md", "docs/quickstart.md", "docs/strategies.md",
         "docs/migration.md"]


def _doc_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, re.S)


def _norm(s: str) -> str:
    s = re.sub(r"\s+", " ", s.strip())
    return s.replace("[ ", "[").replace(" ]", "]")


@pytest.mark.parametrize("doc", _DOCS)
def test_doc_examples_run_and_print_what_they_say(doc):
    """Every ```python block of the page runs (in one namespace, in order); each
    ``print(...)  # expected`` line must print ``expected`` (whitespace-insensitive)."""
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / doc
    if not path.exists():
        pytest.skip(f"{doc} is not part of this installation")
    blocks = _doc_blocks(path.read_text())
    assert blocks, f"{doc} has no python examples"
    mismatches: list[str] = []

    def check(args: tuple, expected: str) -> None:
        got = " ".join(str(a) for a in args)
        if _norm(got) != _norm(expected):
            mismatches.append(f"printed {_norm(got)!r}, documented {_norm(expected)!r}")

    ns: dict = {"__name__": "__doc_example__", "_check_print": check}
    n_checked = 0
    for code in blocks:
        lines = []
        for line in code.splitlines():
            m = re.match(r"^(\s*)print\((.*)\)\s+# (.*)$", line)
            if m:
                lines.append(f"{m.group(1)}_check_print(({m.group(2)},), {m.group(3)!r})")
                n_checked += 1
            else:
                lines.append(line)
        exec(compile("\n".join(lines), str(path), "exec"), ns)
    assert not mismatches, "\n".join(mismatches)
    if doc != "README.md":
        assert n_checked > 0


def test_every_docs_page_is_in_the_site_and_the_readme_and_links_resolve():
    """mkdocs.yml's nav and README.md list every docs page; relative links resolve as plain files (code host)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    if not (root / "mkdocs.yml").exists():
        pytest.skip("no mkdocs.yml in this installation")
    pages = sorted(p.name for p in (root / "docs").glob("*.md"))
    nav = re.findall(r"^\s+- [^\n]*?:\s*(\S+\.md)\s*$", (root / "mkdocs.yml").read_text(), re.M)
    assert sorted(nav) == pages
    readme = (root / "README.md").read_text()
    for page in pages:
        assert f"](docs/{page})" in readme, page
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        text = re.sub(r"```.*?```", "", doc.read_text(), flags=re.S)  # links in code blocks are not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if target.startswith(("http://", "https://", "#", "mailto:")):
                continue
            path = (doc.parent / target.split("#")[0]).resolve()
            assert path.exists(), f"{doc.name}: broken link {target}"
