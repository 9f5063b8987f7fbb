"""Package-level guarantees of issues 2 and 3 that no numerical test sees.

* ``fastconv.STRATEGIES`` is the registry's names, each with its three primitives;
* importing fastconv (and its lazily imported submodules) compiles nothing;
* numba options come from fastconv/_options.py only, with cache=True and fastmath without nnan/ninf;
* no ``assert`` statement checks anything in fastconv/ (``python -O`` strips them: user errors must raise);
* tests/reference.py never imports fastconv.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import fastconv
from fastconv import _registry

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "fastconv"


def _modules():
    return sorted(PACKAGE.rglob("*.py"))


def test_strategies_are_the_registry_names():
    assert fastconv.STRATEGIES == _registry.names()
    assert set(fastconv.STRATEGIES) >= {"direct", "im2col", "col2im"}
    for name in fastconv.STRATEGIES:
        s = _registry.get(name)
        assert s.name == name and s.summary
        assert callable(s.forward) and callable(s.backward_data) and callable(s.backward_filter)


_IMPORT_SCRIPT = r"""
import json, sys
import fastconv, fastconv.pool, fastconv.layers, fastconv._warmup
from numba.core.registry import CPUDispatcher
found, compiled = 0, []
for modname, mod in list(sys.modules.items()):
    if not modname.startswith("fastconv"):
        continue
    for name, obj in vars(mod).items():
        disp = obj if isinstance(obj, CPUDispatcher) else getattr(obj, "dispatcher", None)
        if isinstance(disp, CPUDispatcher):
            found += 1
            if disp.signatures:
                compiled.append(f"{modname}.{name}")
print(json.dumps({"found": found, "compiled": compiled}))
"""


def test_import_compiles_nothing():
    out = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT], capture_output=True, text=True, check=True,
                         cwd=ROOT, timeout=300)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["found"] >= 20  # the scan does see the kernels (serial and parallel)
    assert report["compiled"] == []


def _calls_numba_jit(tree: ast.AST) -> list[int]:
    """Line numbers of ``njit``/``jit``/``numba.njit``/... references (decorators or calls), not strings."""
    lines = []
    for node in ast.walk(tree):
        name = None
        if isinstance(node, ast.Name):
            name = node.id
        elif isinstance(node, ast.Attribute):
            name = node.attr
        if name in ("njit", "jit", "generated_jit", "vectorize", "guvectorize", "stencil", "cfunc"):
            lines.append(node.lineno)
    return lines


def test_numba_options_come_from_one_place():
    offenders = []
    for path in _modules():
        if path.name == "_options.py" and path.parent == PACKAGE:
            continue
        for line in _calls_numba_jit(ast.parse(path.read_text(), str(path))):
            offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == []
    opts = fastconv._options.NJIT_OPTIONS
    assert opts["cache"] is True
    assert not {"nnan", "ninf", "fast"} & set(opts["fastmath"])


def test_every_kernel_has_the_shared_options():
    from numba.core.registry import CPUDispatcher

    import fastconv.pool  # noqa: F401  (lazily imported kernels)

    seen = 0
    for modname, mod in list(sys.modules.items()):
        if not modname.startswith("fastconv"):
            continue
        for obj in vars(mod).values():
            disp = obj if isinstance(obj, CPUDispatcher) else getattr(obj, "dispatcher", None)
            if isinstance(disp, CPUDispatcher):
                seen += 1
                to = disp.targetoptions
                assert type(disp._cache).__name__ != "NullCache", disp  # cache=True (numba keeps it apart)
                assert not {"nnan", "ninf"} & set(to.get("fastmath", ())), disp
    assert seen >= 20


def test_no_assert_statements_in_the_package():
    found = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _modules()
             for n in ast.walk(ast.parse(p.read_text(), str(p))) if isinstance(n, ast.Assert)]
    assert found == []


def test_reference_never_imports_fastconv():
    tree = ast.parse((ROOT / "tests" / "reference.py").read_text())
    imported = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append(node.module or "")
    assert imported and not [m for m in imported if m.split(".")[0] == "fastconv"]
