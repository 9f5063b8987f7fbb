"""Run-time configuration: the scratch-memory (workspace) limit of the strategies.

The "im2col" and "col2im" strategies need temporary matrices (column matrices, GEMM
products, per-tile partial sums).  They process the batch in tiles small enough that all
of their scratch arrays together never exceed the *workspace limit*:

* default: 256 MiB (:data:`DEFAULT_WORKSPACE_BYTES`);
* at import, the environment variable ``FASTCONV_WORKSPACE_BYTES`` (an integer number of
  bytes) overrides the default;
* at run time, :func:`set_workspace_limit` changes it, :func:`workspace_limit` changes it
  inside a ``with`` block, :func:`get_workspace_limit` reads it.

The limit counts every array the strategy allocates besides its inputs and result; it does
not count BLAS's own internal packing buffers (a few MiB at most).  The "direct" strategy
does not tile: its per-task scratch planes (one image's padded planes per running task, and
backward_filter's per-image-block partial sums) must fit the limit as they are -- an upper
bound derived from its kernels (``kernels/direct.py``, ``*_bound``).  When even the smallest
tile of a strategy (or direct's bound) does not fit, calling that strategy raises
:class:`WorkspaceTooSmallError` naming the bytes it needs; ``strategy="auto"`` never picks such
a strategy while another fits.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

from ._params import as_int

#: Default workspace limit in bytes (256 MiB).
DEFAULT_WORKSPACE_BYTES = 256 * 2**20

#: Environment variable read at import: the initial workspace limit in bytes.
WORKSPACE_ENV = "FASTCONV_WORKSPACE_BYTES"


class WorkspaceTooSmallError(MemoryError):
    """A strategy cannot run within the workspace limit (the message names the bytes it needs)."""


def _initial_limit() -> int:
    raw = os.environ.get(WORKSPACE_ENV)
    if raw is None or raw.strip() == "":
        return DEFAULT_WORKSPACE_BYTES
    try:
        value = int(raw.strip())
        if value < 1:
            raise ValueError
    except ValueError:
        warnings.warn(
            f"{WORKSPACE_ENV}={raw!r} is not a positive integer number of bytes; "
            f"using the default workspace limit {DEFAULT_WORKSPACE_BYTES}",
            RuntimeWarning,
            stacklevel=2,
        )
        return DEFAULT_WORKSPACE_BYTES
    return value


_limit = _initial_limit()
_lock = threading.Lock()
_last_scratch = 0


def get_workspace_limit() -> int:
    """The current workspace limit in bytes."""
    return _limit


def set_workspace_limit(nbytes: int | None) -> None:
    """Set the workspace limit to ``nbytes`` (an int >= 1); ``None`` restores the default (256 MiB).

    Parameters
    ----------
    nbytes : int or None
        Upper bound, in bytes, on the scratch memory one call of a strategy allocates.  Smaller
        limits make "im2col" and "col2im" process smaller tiles (same results up to
        floating-point summation order, see docs/strategies.md); "direct", whose scratch is a
        few images' planes per thread, refuses to run below its bound.
    """
    global _limit
    _limit = DEFAULT_WORKSPACE_BYTES if nbytes is None else as_int("nbytes", nbytes, 1)


@contextmanager
def workspace_limit(nbytes: int | None) -> Iterator[None]:
    """``with fastconv.workspace_limit(n): ...`` -- the limit is ``n`` inside the block, restored after."""
    old = get_workspace_limit()
    set_workspace_limit(nbytes)
    try:
        yield
    finally:
        set_workspace_limit(old)


def record_scratch(nbytes: int) -> None:
    """Called by the strategies with the scratch bytes each call allocated (read by the tests)."""
    global _last_scratch
    with _lock:
        _last_scratch = int(nbytes)


def last_scratch_bytes() -> int:
    """Scratch bytes allocated by the most recent "im2col"/"col2im" primitive call."""
    return _last_scratch
