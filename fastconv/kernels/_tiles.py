"""Machinery shared by the GEMM-based strategies ("im2col" in gemm.py, "col2im" in scatter.py).

Execution model
---------------
A primitive splits its work into *tiles* -- a range of images, or a pixel range of one
image -- whose scratch fits the workspace limit (:mod:`fastconv._config`).  Each tile
runs a serial ``@njit(nogil=True)`` gather/scatter kernel and single-threaded BLAS GEMMs
(``np.matmul``, which releases the GIL); ``fastconv.get_num_threads()`` Python threads take
tiles from a shared counter, each with its own scratch buffer.

* Race-free: a tile owns the output elements it writes (whole image planes, or output
  pixels of one image); no atomics.
* Deterministic: the tiles depend only on the shapes, the workspace limit and
  ``NUMBA_NUM_THREADS`` (fixed for the process), never on the current thread count, and
  each tile is computed the same way whichever thread runs it; reductions across tiles
  (weight gradients) go through per-unit partial sums added in a fixed order.  So results
  are bit-identical for any ``set_num_threads``.
* BLAS runs single-threaded during these calls (threadpoolctl); the parallelism comes from
  the tiles.  This is both deterministic and robust: multi-threaded OpenBLAS collapses
  when the cores are oversubscribed, independent single-threaded GEMMs do not.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

import numba
import numpy as np

from .._config import WorkspaceTooSmallError, get_workspace_limit, record_scratch
from .._options import ONE, kernel
from .._params import ConvGeometry, Pair
from .._threads import get_num_threads

#: Threads a process can ever use; tiles are planned for this many (not the current count).
T_MAX = max(1, int(numba.config.NUMBA_NUM_THREADS))
#: Tiles per thread the planner aims for (load balance).
TILES_PER_THREAD = 2
#: Preferred scratch bytes of one tile: the column block then stays in the L2 cache for the GEMM.
TILE_BYTES = 2 * 2**20
#: Fewest output pixels in a pixel tile (shorter GEMMs waste BLAS's packing).
MIN_PIXELS = 128

# --------------------------------------------------------------------------- threads and BLAS

_executor: ThreadPoolExecutor | None = None
_executor_lock = threading.Lock()


def _get_executor() -> ThreadPoolExecutor:
    global _executor
    with _executor_lock:
        if _executor is None:
            _executor = ThreadPoolExecutor(max_workers=max(1, T_MAX - 1), thread_name_prefix="fastconv")
        return _executor


_blas_lock = threading.Lock()
_blas_depth = 0
_blas_saved: list[int] = []
_blas_libs: list | None = None


def _reset_after_fork() -> None:
    """A forked child has none of the parent's worker threads (a task queued to the inherited pool would never
    run: the call would hang) and may inherit a lock held by another thread: start afresh."""
    global _executor, _executor_lock, _blas_lock, _blas_depth
    _executor, _executor_lock = None, threading.Lock()
    _blas_lock, _blas_depth = threading.Lock(), 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_after_fork)


def _find_blas() -> list:
    global _blas_libs
    if _blas_libs is None:
        try:
            from threadpoolctl import ThreadpoolController

            _blas_libs = list(ThreadpoolController().select(user_api="blas").lib_controllers)
        except Exception:  # threadpoolctl missing or unable to inspect: leave BLAS as it is
            _blas_libs = []
    return _blas_libs


@contextmanager
def blas_single_threaded() -> Iterator[None]:
    """BLAS uses one thread inside the block (re-entrant and thread-safe; restored on exit)."""
    global _blas_depth, _blas_saved
    libs = _find_blas()
    if not libs:
        yield
        return
    with _blas_lock:
        if _blas_depth == 0:
            _blas_saved = [lib.get_num_threads() for lib in libs]
            for lib in libs:
                lib.set_num_threads(1)
        _blas_depth += 1
    try:
        yield
    finally:
        with _blas_lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for lib, n in zip(libs, _blas_saved, strict=True):
                    lib.set_num_threads(n)


#: Primitives with fewer multiply-adds than this run on the calling thread only (a hand-off costs more).
INLINE_MACS = 2_000_000


def run_tiles(n_tiles: int, work: Callable[[int, int], None], macs: int | None = None) -> None:
    """Call ``work(tile, slot)`` for every tile; ``slot`` < the thread count names the caller's scratch.

    ``macs`` (the primitive's multiply-adds) below :data:`INLINE_MACS` keeps everything on the
    calling thread; the results are the same either way (tiles never depend on the threads).
    """
    nthreads = min(slots_for(n_tiles), 1 if macs is not None and macs < INLINE_MACS else n_tiles)
    with blas_single_threaded():
        if nthreads <= 1:
            for i in range(n_tiles):
                work(i, 0)
            return
        counter = itertools.count()

        def loop(slot: int) -> None:
            while True:
                i = next(counter)
                if i >= n_tiles:
                    return
                work(i, slot)

        ex = _get_executor()
        futures = [ex.submit(loop, slot) for slot in range(1, nthreads)]
        try:
            loop(0)
        finally:
            for f in futures:
                f.result()


def slots_for(n_tiles: int) -> int:
    """How many scratch slots (threads) a call with ``n_tiles`` tiles may use now."""
    return max(1, min(get_num_threads(), n_tiles))


def mm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """``out = a @ b`` (stacked); an inner dimension of 1 is an outer product (NumPy's matmul is slow there)."""
    if a.shape[-1] == 1:
        np.multiply(a, b, out=out)
    else:
        np.matmul(a, b, out=out)


# --------------------------------------------------------------------------- tiles and the workspace


class Tile(NamedTuple):
    """Images ``n0 .. n0+nb-1``, output pixels ``p0 .. p0+pc-1`` of each (``pc`` = all when ``nb`` > 1)."""

    n0: int
    nb: int
    p0: int
    pc: int


class Lazy(Sequence):
    """A plan's list of tiles or work units, each computed on demand from a few integers.

    The plans are regular, so they need not be stored: a stored list costs ~100 bytes of
    Python objects per tile, outside the workspace limit and growing with the batch (a
    limit-filling plan then overshot the limit -- tests/test_memory.py).  ``item(i)`` gives
    entry ``0 <= i < len``; iteration, negative indices and ``len`` work as for a list.
    """

    __slots__ = ("_len",)

    def __init__(self, length: int) -> None:
        self._len = length

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, i):  # type: ignore[override]
        if isinstance(i, slice):
            return [self.item(k) for k in range(*i.indices(self._len))]
        if i < 0:
            i += self._len
        if not 0 <= i < self._len:
            raise IndexError(i)
        return self.item(i)

    def item(self, i: int):
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({list(self)!r})"


class Grid(Lazy):
    """``(n0, nb, a, b)`` for groups of ``nb`` images (the last one shorter) crossed with ``parts[j] = (a, b)``."""

    __slots__ = ("_n", "_nb", "_parts")

    def __init__(self, n: int, nb: int, parts: Sequence[tuple[int, int]]) -> None:
        super().__init__(-(-n // nb) * len(parts))
        self._n, self._nb, self._parts = n, nb, parts

    def item(self, i: int) -> Tile:
        img, j = divmod(i, len(self._parts))
        n0 = img * self._nb
        return Tile(n0, min(self._nb, self._n - n0), *self._parts[j])

    def __iter__(self) -> Iterator[Tile]:
        parts = list(self._parts)
        for n0 in range(0, self._n, self._nb):
            nb = min(self._nb, self._n - n0)
            for a, b in parts:
                yield Tile(n0, nb, a, b)


class Pieces(Lazy):
    """``(p0, len)``: ``p`` pixels in consecutive pieces of ``pc`` (the last one shorter)."""

    __slots__ = ("_p", "_pc")

    def __init__(self, p: int, pc: int) -> None:
        super().__init__(-(-p // pc))
        self._p, self._pc = p, pc

    def item(self, i: int) -> tuple[int, int]:
        p0 = i * self._pc
        return p0, min(self._pc, self._p - p0)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        for p0 in range(0, self._p, self._pc):
            yield p0, min(self._pc, self._p - p0)


class Ranges(Lazy):
    """``(lo, hi)``: ``0 .. total`` in ``parts`` consecutive ranges, ``lo = total·k // parts``."""

    __slots__ = ("_total",)

    def __init__(self, total: int, parts: int) -> None:
        super().__init__(parts)
        self._total = total

    def item(self, k: int) -> tuple[int, int]:
        return self._total * k // self._len, self._total * (k + 1) // self._len


def too_small(what: str, need: int) -> WorkspaceTooSmallError:
    return WorkspaceTooSmallError(
        f"{what} needs at least {need} bytes of scratch memory, more than the workspace limit "
        f"{get_workspace_limit()} bytes; raise it with fastconv.set_workspace_limit() or use another strategy "
        "(fastconv.explain(...) lists each strategy's scratch)"
    )


def plan_tiles(
    n: int, p: int, px_bytes: int, budget: int, *, min_pixels: int = MIN_PIXELS, tile_bytes: int = TILE_BYTES
) -> Sequence[Tile] | None:
    """Split ``n`` images of ``p`` output pixels into tiles of at most ``budget`` scratch bytes.

    ``px_bytes`` is the scratch of one (image, pixel).  Tiles are whole images when they are
    small, else pixel ranges of one image (at least ``min_pixels`` long unless the budget
    forbids); about ``TILES_PER_THREAD * T_MAX`` tiles or more.  None when one pixel does not fit.
    """
    if n == 0 or p == 0:
        return []
    cap = budget // px_bytes
    if cap < 1:
        return None
    per_tile = min(cap, max(tile_bytes // px_bytes, min(min_pixels, p)))
    target = TILES_PER_THREAD * T_MAX
    if per_tile >= p:
        nb = max(1, min(per_tile // p, -(-n // target)))
        if nb > 1 or n >= target or p < 2 * min_pixels:
            return Grid(n, nb, ((0, p),))
        pieces = min(-(-target // n), p // min_pixels)
    else:
        pieces = max(-(-p // per_tile), min(-(-target // n), p // min_pixels))
    pc = min(per_tile, -(-p // pieces))
    return Grid(n, 1, Pieces(p, pc))


def tile_pixels(tiles: Sequence[Tile]) -> int:
    """Pixels (images x pixels) of the largest tile of a :func:`plan_tiles` plan: its first (0 for no tiles).

    Only the last image group, or the last pixel piece of each image, is shorter.
    """
    return tiles[0].nb * tiles[0].pc if len(tiles) else 0


class Scratch:
    """Per-slot scratch buffers of one primitive call, with the workspace accounting.

    ``per_slot`` and ``shared`` give element counts by name.  Shared buffers exist at once;
    a slot's buffers are allocated when that slot first asks (only one thread uses a slot).
    """

    def __init__(self, dtype: np.dtype, slots: int, per_slot: dict[str, int], shared: dict[str, int]) -> None:
        isz = np.dtype(dtype).itemsize
        self.nbytes = isz * (slots * sum(per_slot.values()) + sum(shared.values()))
        record_scratch(self.nbytes)
        self.dtype = dtype
        self.per_slot = per_slot
        self.slots: list[dict[str, np.ndarray] | None] = [None] * slots
        self.shared = {k: np.empty(v, dtype) for k, v in shared.items()}

    def get(self, slot: int, name: str, size: int) -> np.ndarray:
        bufs = self.slots[slot]
        if bufs is None:
            bufs = self.slots[slot] = {k: np.empty(v, self.dtype) for k, v in self.per_slot.items()}
        return bufs[name][:size]


# --------------------------------------------------------------------------- geometry helpers


class Conv(NamedTuple):
    """Everything the tile kernels need about one convolution (in conv2d terms)."""

    n: int
    c: int
    h: int
    w: int
    m: int
    g: int
    kh: int
    kw: int
    oh: int
    ow: int
    sh: int
    sw: int
    dh: int
    dw: int
    pt: int
    pl: int

    @property
    def cg(self) -> int:
        return self.c // self.g

    @property
    def mg(self) -> int:
        return self.m // self.g

    @property
    def kk(self) -> int:
        return self.kh * self.kw

    @property
    def p(self) -> int:
        return self.oh * self.ow

    @property
    def pointwise(self) -> bool:
        """1x1 kernel, stride 1, no padding, output = input size: the columns are the input itself."""
        return self.kk == 1 and self.sh == 1 and self.sw == 1 and self.pt == 0 and self.pl == 0 and (
            self.oh == self.h and self.ow == self.w
        )


def conv_of(x_shape: tuple[int, ...], w_shape: tuple[int, ...], geom: ConvGeometry, out_hw: Pair) -> Conv:
    n, c, h, w = x_shape
    m, _, kh, kw = w_shape
    (sh, sw), (dh, dw) = geom.stride, geom.dilation
    return Conv(n, c, h, w, m, geom.groups, kh, kw, out_hw[0], out_hw[1], sh, sw, dh, dw, geom.pad[0], geom.pad[2])


def geo_of(cv: Conv) -> tuple[int, int, int, int, int, int, int, int]:
    """The geometry tuple of :func:`gather_patches`: ``(KW, sh, sw, dh, dw, pt, pl, OW)``."""
    return (cv.kw, cv.sh, cv.sw, cv.dh, cv.dw, cv.pt, cv.pl, cv.ow)


# --------------------------------------------------------------------------- the gather (im2col) and scatter (col2im)


@kernel
def _valid_cols(w_in, ow_, sw, off):
    """The output columns ``[lo, hi)`` whose input column ``ow*sw + off`` lies inside ``[0, w_in)``."""
    lo = 0 if off >= 0 else (-off + sw - 1) // sw
    hi = (w_in - 1 - off) // sw + 1 if w_in - 1 - off >= 0 else 0
    hi = min(hi, ow_)
    lo = min(lo, hi)
    return lo, hi


_U = np.uint64  # unsigned indices: numba emits no negative-index wraparound, so LLVM vectorises the copies


@kernel
def _copy8(dst, d, src, s):
    """``dst[d:d+8] = src[s:s+8]``: all loads before all stores, so LLVM makes it one vector move."""
    v0 = src[s]
    v1 = src[s + _U(1)]
    v2 = src[s + _U(2)]
    v3 = src[s + _U(3)]
    v4 = src[s + _U(4)]
    v5 = src[s + _U(5)]
    v6 = src[s + _U(6)]
    v7 = src[s + _U(7)]
    dst[d] = v0
    dst[d + _U(1)] = v1
    dst[d + _U(2)] = v2
    dst[d + _U(3)] = v3
    dst[d + _U(4)] = v4
    dst[d + _U(5)] = v5
    dst[d + _U(6)] = v6
    dst[d + _U(7)] = v7


@kernel
def _add8(dst, d, src, s):
    """``dst[d:d+8] += src[s:s+8]``: all loads before all stores (one vector add)."""
    v0 = dst[d] + src[s]
    v1 = dst[d + _U(1)] + src[s + _U(1)]
    v2 = dst[d + _U(2)] + src[s + _U(2)]
    v3 = dst[d + _U(3)] + src[s + _U(3)]
    v4 = dst[d + _U(4)] + src[s + _U(4)]
    v5 = dst[d + _U(5)] + src[s + _U(5)]
    v6 = dst[d + _U(6)] + src[s + _U(6)]
    v7 = dst[d + _U(7)] + src[s + _U(7)]
    dst[d] = v0
    dst[d + _U(1)] = v1
    dst[d + _U(2)] = v2
    dst[d + _U(3)] = v3
    dst[d + _U(4)] = v4
    dst[d + _U(5)] = v5
    dst[d + _U(6)] = v6
    dst[d + _U(7)] = v7


@kernel
def _add4(dst, d, src, s):
    """``dst[d:d+4] += src[s:s+4]``: all loads before all stores (one vector add)."""
    v0 = dst[d] + src[s]
    v1 = dst[d + _U(1)] + src[s + _U(1)]
    v2 = dst[d + _U(2)] + src[s + _U(2)]
    v3 = dst[d + _U(3)] + src[s + _U(3)]
    dst[d] = v0
    dst[d + _U(1)] = v1
    dst[d + _U(2)] = v2
    dst[d + _U(3)] = v3


@kernel
def _copy(dst, d0, src, s0, n):
    """``dst[d0:d0+n] = src[s0:s0+n]`` (1-D, not overlapping); short rows as 8-wide blocks, the last overlapping."""
    d = _U(d0)
    s = _U(s0)
    if n >= 64 or n < 8:
        for u in range(n):
            dst[d + _U(u)] = src[s + _U(u)]
        return
    k = _U(0)
    last = _U(n - 8)
    while k < last:
        _copy8(dst, d + k, src, s + k)
        k += _U(8)
    _copy8(dst, d + last, src, s + last)


@kernel
def _copy_strided(dst, d0, src, s0, n, step):
    """``dst[d0 + u] = src[s0 + u*step]`` for ``u < n``."""
    d = _U(d0)
    s = _U(s0)
    st = _U(step)
    for u in range(n):
        dst[d + _U(u)] = src[s + _U(u) * st]


@kernel
def _zero(dst, d0, n):
    d = _U(d0)
    for u in range(n):
        dst[d + _U(u)] = 0


@kernel
def _add(dst, d0, src, s0, n):
    """``dst[d0:d0+n] += src[s0:s0+n]`` in 8-wide blocks, then the tail (each element added once)."""
    d = _U(d0)
    s = _U(s0)
    if n >= 32:
        for u in range(n):
            dst[d + _U(u)] += src[s + _U(u)]
        return
    k = _U(0)
    full = _U(n - n % 8)
    while k < full:
        _add8(dst, d + k, src, s + k)
        k += _U(8)
    if n % 8 >= 4:
        _add4(dst, d + k, src, s + k)
        k += _U(4)
    while k < _U(n):
        dst[d + k] += src[s + k]
        k += _U(1)


@kernel
def _add_strided(dst, d0, src, s0, n, step):
    """``dst[d0 + u*step] += src[s0 + u]`` for ``u < n``."""
    d = _U(d0)
    s = _U(s0)
    st = _U(step)
    for u in range(n):
        dst[d + _U(u) * st] += src[s + _U(u)]


@kernel
def _add_gathered(dst, d0, src, s0, n, step):
    """``dst[d0 + u] += src[s0 + u*step]`` for ``u < n``."""
    d = _U(d0)
    s = _U(s0)
    st = _U(step)
    for u in range(n):
        dst[d + _U(u)] += src[s + _U(u) * st]


@kernel
def _valid_rows(h_in, r0, r1, sh, base):
    """The output rows ``[va, vb)`` within ``[r0, r1)`` whose input row ``oh*sh + base`` lies in ``[0, h_in)``."""
    va = r0 if base >= 0 else max(r0, (-base + sh - 1) // sh)
    vb = min(r1, (h_in - 1 - base) // sh + 1) if h_in - 1 - base >= 0 else r0
    va = min(va, r1)
    return va, max(vb, va)


@kernel
def _rows_interior(out, d0, xf, s0, nrows, ow_, srow):
    """``nrows`` whole rows ``out[d0 + r*OW + q] = xf[s0 + r*srow + q]`` (``8 <= OW < 64``) as 8-wide moves."""
    d = _U(d0)
    s = _U(s0)
    last = _U(ow_ - 8)
    for _ in range(nrows):
        k = _U(0)
        while k < last:
            _copy8(out, d + k, xf, s + k)
            k += _U(8)
        _copy8(out, d + last, xf, s + last)
        d += _U(ow_)
        s += _U(srow)


@kernel
def _rows_copy(out, d0, xf, s0, nrows, ow_, srow, lo, hi, sw):
    """``nrows`` whole rows: zeros, then ``xf[s0 + r*srow + q*sw]`` for columns ``lo <= q < hi``, then zeros."""
    d = d0
    s = s0 + lo * sw
    for _ in range(nrows):
        if lo > 0:
            _zero(out, d, lo)
        if sw == 1:
            _copy(out, d + lo, xf, s, hi - lo)
        else:
            _copy_strided(out, d + lo, xf, s, hi - lo, sw)
        if hi < ow_:
            _zero(out, d + hi, ow_ - hi)
        d += ow_
        s += srow


@kernel
def gather_patches(x, out, n0, nb, p0, pc, c0, c1, t0, t1, geo, s_n, s_r):
    """im2col of one tile into the flat buffer ``out``; ``geo`` = ``(KW, sh, sw, dh, dw, pt, pl, OW)`` (:func:`geo_of`).

    ``out[nl*s_n + r*s_r + j] = x_padded[n0+nl, c, oh*sh + kh*dh, ow*sw + kw*dw]`` for the
    channels ``c0 <= c < c1``, taps ``t = kh*KW + kw`` in ``[t0, t1)``, row
    ``r = (c - c0)*(t1 - t0) + (t - t0)`` and output pixel ``p0 + j = oh*OW + ow``
    (zero where the window lies in the padding).  The geometry travels as one tuple: a numba
    call with 20 arguments leaves a 20-item tuple per call for the garbage collector (measured
    with tracemalloc), which the memory bounds of tests/test_memory.py would count per tile.
    ``x`` is C-contiguous; each output row
    segment is one copy with unsigned flat indices (no per-element bounds or wraparound
    logic), so short rows cost a few vector moves.  A tile of whole output rows (the usual
    case) handles each tap's rows as one block: the rows in the padding, then the rows that
    copy (a tight loop of 8-wide moves for 8..63-wide interior rows), then padding again.
    """
    kw_, sh, sw, dh, dw, pt, pl, ow_ = geo
    c_, h_in, w_in = x.shape[1], x.shape[2], x.shape[3]
    if pc <= 0:
        return
    xf = x.reshape(x.size)
    hw = h_in * w_in
    nt = t1 - t0
    r0 = p0 // ow_
    r1 = (p0 + pc - 1) // ow_ + 1
    full = p0 % ow_ == 0 and pc % ow_ == 0  # whole output rows: per tap, one block of rows
    short = sw == 1 and ow_ >= 8 and ow_ < 64
    for nl in range(nb):
        for c in range(c0, c1):
            xb = ((n0 + nl) * c_ + c) * hw
            for t in range(t0, t1):
                kh = t // kw_
                kw = t - kh * kw_
                off = kw * dw - pl
                lo, hi = _valid_cols(w_in, ow_, sw, off)
                db = nl * s_n + ((c - c0) * nt + (t - t0)) * s_r - p0  # + pixel index
                if full:
                    base = kh * dh - pt
                    va, vb = _valid_rows(h_in, r0, r1, sh, base)
                    if va > r0:
                        _zero(out, db + r0 * ow_, (va - r0) * ow_)
                    if vb > va:
                        s = xb + (va * sh + base) * w_in + off
                        if short and lo == 0 and hi == ow_:
                            _rows_interior(out, db + va * ow_, xf, s, vb - va, ow_, sh * w_in)
                        else:
                            _rows_copy(out, db + va * ow_, xf, s, vb - va, ow_, sh * w_in, lo, hi, sw)
                    if r1 > vb:
                        _zero(out, db + vb * ow_, (r1 - vb) * ow_)
                    continue
                for oh in range(r0, r1):
                    rb = oh * ow_
                    ca = max(p0 - rb, 0)
                    cb = min(p0 + pc - rb, ow_)
                    d = db + rb
                    ih = oh * sh - pt + kh * dh
                    if ih < 0 or ih >= h_in:
                        _zero(out, d + ca, cb - ca)
                        continue
                    a = min(max(ca, lo), cb)
                    b = max(min(cb, hi), a)
                    if a > ca:
                        _zero(out, d + ca, a - ca)
                    s = xb + ih * w_in + off
                    if sw == 1:
                        _copy(out, d + a, xf, s + a, b - a)
                    else:
                        _copy_strided(out, d + a, xf, s + a * sw, b - a, sw)
                    if cb > b:
                        _zero(out, d + b, cb - b)


@kernel
def _rows_add(xf, d0, src, s0, nrows, ow_, drow, lo, hi, sw):
    """``nrows`` rows: ``xf[d0 + r*drow + q*sw] += src[s0 + r*OW + q]`` for columns ``lo <= q < hi``."""
    if sw == 1:  # contiguous on both sides: the shift-and-add rows
        _rows_shift_add(xf, d0 + lo, drow, src, s0 + lo, ow_, nrows, hi - lo, ONE)
        return
    d = d0 + lo * sw
    s = s0 + lo
    n = hi - lo
    for _ in range(nrows):
        _add_strided(xf, d, src, s, n, sw)
        d += drow
        s += ow_


@kernel
def _rows_shift_add(dst, d0, drow, src, s0, srow, nrows, n, sw):
    """``dst[d0 + r*drow + q] += src[s0 + r*srow + q*sw]`` for ``r < nrows``, ``q < n``."""
    d = d0
    s = s0
    if sw == 1 and n >= 8 and n < 32:  # short rows: 8-wide adds, a 4-wide one, then the tail
        full = _U(n - n % 8)
        ud = _U(d)
        us = _U(s)
        for _ in range(nrows):
            k = _U(0)
            while k < full:
                _add8(dst, ud + k, src, us + k)
                k += _U(8)
            if n % 8 >= 4:
                _add4(dst, ud + k, src, us + k)
                k += _U(4)
            while k < _U(n):
                dst[ud + k] += src[us + k]
                k += _U(1)
            ud += _U(drow)
            us += _U(srow)
        return
    for _ in range(nrows):
        if sw == 1:
            _add(dst, d, src, s, n)
        else:
            _add_gathered(dst, d, src, s, n, sw)
        d += drow
        s += srow


@kernel
def scatter_patches(src, dx, n0, nb, p0, pc, c0, c1, kh_, kw_, sh, sw, dh, dw, pt, pl, ow_, s_n, s_r):
    """col2im of one tile: the adjoint of :func:`gather_patches` (all taps), added into ``dx``.

    The tile owns the planes ``dx[n0:n0+nb, c0:c1]``; every element is accumulated in the
    fixed order (tap, pixel), so the result does not depend on which thread runs the tile.
    """
    c_, h_in, w_in = dx.shape[1], dx.shape[2], dx.shape[3]
    if pc <= 0:
        return
    xf = dx.reshape(dx.size)
    hw = h_in * w_in
    nt = kh_ * kw_
    r0 = p0 // ow_
    r1 = (p0 + pc - 1) // ow_ + 1
    full = p0 % ow_ == 0 and pc % ow_ == 0  # whole output rows: per tap, one block of rows
    for nl in range(nb):
        for c in range(c0, c1):
            xb = ((n0 + nl) * c_ + c) * hw
            for t in range(nt):
                kh = t // kw_
                kw = t - kh * kw_
                off = kw * dw - pl
                lo, hi = _valid_cols(w_in, ow_, sw, off)
                sb = nl * s_n + ((c - c0) * nt + t) * s_r - p0
                if full:
                    base = kh * dh - pt
                    va, vb = _valid_rows(h_in, r0, r1, sh, base)
                    if vb > va and hi > lo:
                        _rows_add(xf, xb + (va * sh + base) * w_in + off, src, sb + va * ow_, vb - va, ow_,
                                  sh * w_in, lo, hi, sw)
                    continue
                for oh in range(r0, r1):
                    ih = oh * sh - pt + kh * dh
                    if ih < 0 or ih >= h_in:
                        continue
                    rb = oh * ow_
                    a = max(max(p0 - rb, 0), lo)
                    b = min(min(p0 + pc - rb, ow_), hi)
                    if b <= a:
                        continue
                    d = xb + ih * w_in + off
                    if sw == 1:
                        _add(xf, d + a, src, sb + rb + a, b - a)
                    else:
                        _add_strided(xf, d + a * sw, src, sb + rb + a, b - a, sw)


@kernel
def gather_dy(dy3, out, n0, nb, p0, pc):
    """``out[m, nl*pc + j] = dy3[n0 + nl, m, p0 + j]`` (images side by side along the GEMM's K)."""
    m_, p_ = dy3.shape[1], dy3.shape[2]
    f = dy3.reshape(dy3.size)
    for m in range(m_):
        for nl in range(nb):
            _copy(out, (m * nb + nl) * pc, f, ((n0 + nl) * m_ + m) * p_ + p0, pc)


@kernel
def sum_parts_t(parts, out, r_lo, r_hi):
    """``out[g, m, r] = Σ_u parts[u, g, r, m]`` (u in order 0, 1, ...) for ``r_lo <= r < r_hi``.

    The weight-gradient partials, summed and transposed: blocks of 16 rows of every partial
    are summed contiguously (vectorised) into a small buffer, which is then written
    transposed.  Each element's sum has the same order whatever the row range.
    """
    u_, g_, r_, m_ = parts.shape
    rb = 16
    buf = np.empty(rb * m_, dtype=parts.dtype)
    pf = parts.reshape(parts.size)
    of = out.reshape(out.size)
    plane = r_ * m_
    for g in range(g_):
        for r0 in range(r_lo, r_hi, rb):
            r1 = min(r0 + rb, r_hi)
            n = (r1 - r0) * m_
            base = _U(g * plane + r0 * m_)
            for q in range(n):
                buf[_U(q)] = pf[base + _U(q)]
            for u in range(1, u_):
                b = _U((u * g_ + g) * plane + r0 * m_)
                for q in range(n):
                    buf[_U(q)] += pf[b + _U(q)]
            for mi in range(m_):
                ob = _U((g * m_ + mi) * r_ + r0)
                for r in range(r1 - r0):
                    of[ob + _U(r)] = buf[_U(r * m_ + mi)]


def reduce_parts(parts: np.ndarray, out: np.ndarray) -> None:
    """``out = Σ_u parts[u]`` transposed (:func:`sum_parts_t`), row ranges on the threads."""
    r_ = parts.shape[2]
    chunks = max(1, min(TILES_PER_THREAD * T_MAX, r_ // 64, parts.size // (1 << 18)))
    bounds = [r_ * k // chunks for k in range(chunks + 1)]

    def work(i: int, slot: int) -> None:
        sum_parts_t(parts, out, bounds[i], bounds[i + 1])

    run_tiles(chunks, work)


# --------------------------------------------------------------------------- backward_data: GEMM, then col2im


def _bd_units(cv: Conv, isz: int, budget: int) -> tuple[Sequence[tuple[int, int, int, int]], int] | None:
    """Work units ``(n0, nb, c0, c1)`` of backward_data and their pixel chunk length."""
    n, c, g, cg, kk, p = cv.n, cv.c, cv.g, cv.cg, cv.kk, cv.p
    target = TILES_PER_THREAD * T_MAX
    img = c * kk * p * isz
    if img <= budget:
        nb = max(1, min(budget // img, max(1, TILE_BYTES // img), -(-n // target)))
        if nb > 1 or n >= target:
            return Grid(n, nb, ((0, c),)), p
        # few images: split the channels, keeping groups whole where possible
        pieces = -(-target // n)
        cb = max(1, -(-c // pieces))
    else:
        # the largest channel block with at least a short pixel chunk in budget
        cb = max(1, min(c, budget // (kk * isz * min(p, MIN_PIXELS))))
    if g > 1:
        cb = (cb // cg) * cg if cb >= cg else cb
    blocks = []
    if cb >= cg and cb % cg == 0:
        for c0 in range(0, c, cb):
            blocks.append((c0, min(c0 + cb, c)))
    else:
        for gi in range(g):
            for c0 in range(gi * cg, (gi + 1) * cg, cb):
                blocks.append((c0, min(c0 + cb, (gi + 1) * cg)))
    pc = min(p, budget // (cb * kk * isz))
    if pc < 1:
        return None
    # pixel chunks whose GEMM product stays in the cache for the scatter (whole output rows where possible)
    cache_pc = max(MIN_PIXELS, TILE_BYTES // (cb * kk * isz))
    if cache_pc < pc:
        pc = cache_pc - cache_pc % cv.ow if cache_pc >= cv.ow else cache_pc
    return Grid(n, 1, blocks), pc


def backward_data(dy: np.ndarray, w: np.ndarray, cv: Conv) -> np.ndarray:
    """``dx`` = col2im(Wᵀ · dy): per tile one GEMM on the un-expanded ``dy``, then a race-free scatter-add.

    A tile owns whole ``dx`` planes (a range of images, or channels of one image), so the
    scatter needs no atomics; pixel chunks of a tile are added in a fixed order.
    """
    n, c, ow = cv.n, cv.c, cv.ow
    dx = np.zeros((n, c, cv.h, cv.w), dtype=dy.dtype)
    if n == 0:
        record_scratch(0)
        return dx
    isz = dy.dtype.itemsize
    budget = get_workspace_limit() // T_MAX
    plan = _bd_units(cv, isz, budget)
    if plan is None:
        raise too_small("backward_data with GEMM + col2im", T_MAX * cv.kk * isz)
    units, pc = plan
    g, cg, mg, kk, p = cv.g, cv.cg, cv.mg, cv.kk, cv.p
    pointwise = cv.pointwise
    max_elems = 0 if pointwise else max(nb * (c1 - c0) for (_, nb, c0, c1) in units) * kk * pc
    scratch = Scratch(dy.dtype, slots_for(len(units)), {"cols": max_elems}, {})
    dx4 = dx.reshape(n, g, cg, cv.h * cv.w)
    wt = w.reshape(g, mg, cg * kk).transpose(0, 2, 1)  # (G, Cg*KK, Mg), a view BLAS reads transposed
    dy4 = dy.reshape(n, g, mg, p)

    def work(i: int, slot: int) -> None:
        n0, nb, c0, c1 = units[i]
        g0 = c0 // cg
        if (c1 - c0) % cg == 0 and c0 % cg == 0:
            g1, r0, r1 = c1 // cg, 0, cg * kk
        else:
            g1, r0, r1 = g0 + 1, (c0 - g0 * cg) * kk, (c1 - g0 * cg) * kk
        a = wt[g0:g1, r0:r1]
        for p0 in range(0, p, pc):
            q = min(pc, p - p0)
            if pointwise:  # dx is Wᵀ · dy itself
                mm(a, dy4[n0:n0 + nb, g0:g1, :, p0:p0 + q], out=dx4[n0:n0 + nb, g0:g1, r0:r1, p0:p0 + q])
                continue
            buf = scratch.get(slot, "cols", nb * (c1 - c0) * kk * q)
            mm(a, dy4[n0:n0 + nb, g0:g1, :, p0:p0 + q], out=buf.reshape(nb, g1 - g0, r1 - r0, q))
            scatter_patches(buf, dx, n0, nb, p0, q, c0, c1, cv.kh, cv.kw, cv.sh, cv.sw, cv.dh, cv.dw, cv.pt, cv.pl,
                            ow, (c1 - c0) * kk * q, q)

    run_tiles(len(units), work, n * cv.m * cg * kk * p)
    return dx


def backward_data_scratch(cv: Conv, isz: int) -> int | None:
    """Scratch bytes :func:`backward_data` allocates for ``cv`` now (None: does not fit the limit)."""
    if cv.n == 0:
        return 0
    plan = _bd_units(cv, isz, get_workspace_limit() // T_MAX)
    if plan is None:
        return None
    units, pc = plan
    if cv.pointwise:
        return 0
    return slots_for(len(units)) * max(nb * (c1 - c0) for (_, nb, c0, c1) in units) * cv.kk * pc * isz
