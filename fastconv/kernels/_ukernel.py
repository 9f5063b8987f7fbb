"""A register-blocked multiply-add micro-kernel written in LLVM IR (a numba intrinsic).

numba's loop vectoriser keeps accumulators in memory when they are array elements, and
prefers 256-bit vectors even where the CPU has 512-bit ones; a GEMM-like loop nest written
in Python-numba therefore stalls at about a third of the machine's multiply-add rate.
:func:`tile_taps` is the inner block of a convolution written directly in LLVM IR with
explicit vector types: ``MR x NV`` vector accumulators live in registers for the whole
reduction, each step loads ``NV`` vectors of the input and broadcasts ``MR`` weights::

    ct[r, j] = sum_k  ap[k, r] * s[base + offs[k] + j]        r < MR, j < NR = NV * LANES

``s`` is a flattened (zero-padded, polyphase) input scratch as in kernels/direct.py, so every
tap ``k`` of the convolution is one offset and ``j`` runs over consecutive output columns (in
the scratch's row length).  ``ap`` holds ``MR`` output channels' weights interleaved tap by tap.

The vector width follows the CPU numba compiles for (``numba.config.CPU_NAME`` /
``CPU_FEATURES`` if set, else the host): 512-bit with AVX-512F (``MR = 8``, ``NV = 3``:
24 of 32 registers accumulate), 256-bit with AVX (``MR = 6``, ``NV = 2``: 12 of 16),
128-bit otherwise.  The constants are fixed at import; numba's disk cache is keyed by the
CPU too, so a cached kernel always matches them.  Sums are taken tap by tap in order for
every output element, so results do not depend on the blocking or the thread count.

The other intrinsics here, likewise explicit vector code:

* :func:`tile_dots` -- ``DR x DT`` dot products (four ``dy`` rows x six shifted scratch rows,
  "direct"'s weight gradient), vector accumulators summed over the lanes in a fixed order;
* :func:`input_tiles` / :func:`output_tiles` -- "winograd"'s input and output transforms of
  ``lanes`` tiles two columns apart (even and odd lanes split / interleaved by shuffles);
* :func:`tile_taps_narrow` / :func:`tile_taps_few` / :func:`tile_taps_half` -- :func:`tile_taps` on one vector
  of columns / on ``MR_FEW`` or ``MR_HALF`` output channels (a last panel or block that holds no more);
* :func:`tile_taps_out` -- :func:`tile_taps` storing into the output planes (plus the bias), no tile buffer;
* :func:`wide_vectors` -- the function attribute that lets LLVM vectorise a kernel's own loops with
  512-bit vectors (it prefers 256-bit ones on AVX-512 CPUs).

numba's disk cache keys a kernel by its own source file only: after editing this module, clear the cache
(``__pycache__/*.nbi``/``*.nbc`` under ``fastconv/kernels`` or ``NUMBA_CACHE_DIR``), or kernels compiled
with the old intrinsics keep running.  (An installed upgrade rewrites every file, which invalidates them.)

The 256- and 128-bit variants are tested by running the suite with ``NUMBA_CPU_NAME=haswell``
(plus its ``NUMBA_CPU_FEATURES``) and ``NUMBA_CPU_NAME=generic`` (a cache directory of their own).
"""

from __future__ import annotations

import llvmlite.binding as llvm
import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


def _vector_bits() -> int:
    """Widest float vector the compile target has: 512, 256 or 128 bits."""
    features = numba.config.CPU_FEATURES
    if features is None:
        if numba.config.CPU_NAME not in (None, "host"):
            return 128  # a named generic CPU (portable cache): no feature list to trust
        features = llvm.get_host_cpu_features().flatten()
    feats = set(features.split(","))
    if "+avx512f" in feats:
        return 512
    if "+avx" in feats:
        return 256
    return 128


VECTOR_BITS = _vector_bits()
#: Output channels per micro-kernel call.
MR = 8 if VECTOR_BITS == 512 else 6 if VECTOR_BITS == 256 else 4
#: Vectors of output columns per micro-kernel call.
NV = 3 if VECTOR_BITS == 512 else 2


def lanes(itemsize: int) -> int:
    """Elements per vector for an item size in bytes."""
    return VECTOR_BITS // (8 * itemsize)


def lanes_narrow(itemsize: int) -> int:
    """Tiles per :func:`input_tiles_narrow` / :func:`output_tiles_narrow` call: a quarter of a vector's lanes
    (rows of 7 tiles, 14x14 images, hold too few tiles for whole or half vectors)."""
    return max(2, lanes(itemsize) // 4)


def lanes4(itemsize: int) -> int:
    """Tiles per :func:`input_tiles4` / :func:`output_tiles4` call: half a vector's lanes (a call spans four
    columns per tile; with whole vectors a 56-pixel row would hold too few tiles)."""
    return max(2, lanes(itemsize) // 2)


def columns(itemsize: int) -> int:
    """Output columns per micro-kernel call (``NR``)."""
    return NV * lanes(itemsize)


def _codegen(width: int, isz: int, mr: int = 0, nv: int = 0, strided: bool = False, ldc: int = 0,
             tap_stride: int = 0, out: bool = False):
    """LLVM IR builder of :func:`tile_taps` (``mr`` x ``nv`` vector accumulators; 0: ``MR`` / ``NV``), or with
    ``strided`` of :func:`tile_taps_lda`, or with ``out`` of :func:`tile_taps_out`; rows of ``ct`` ``ldc`` elements
    apart (0: ``nv * width``), taps of ``ap`` ``tap_stride`` elements apart (0: ``mr``; a constant, unlike
    ``strided``'s argument)."""
    MR_, NV_ = mr or MR, nv or NV
    nr = ldc or NV_ * width

    def codegen(context, builder, signature, args):
        i64 = ir.IntType(64)
        if strided:
            ap, lda, bp, base, offs, ct, kc, accumulate = args
            tap, tlda, tbp, tbase, toffs, tct, tkc, tacc = signature.args
        elif out:
            ap, bp, base, offs, ct, c0, ldy, bias, b0, plus, kc = args
            tap, tbp, tbase, toffs, tct, tc0, tldy, tbias, tb0, tplus, tkc = signature.args
        else:
            ap, bp, base, offs, ct, kc, accumulate = args
            tap, tbp, tbase, toffs, tct, tkc, tacc = signature.args
        fty = context.get_value_type(tap.dtype)
        vty = ir.VectorType(fty, width)
        vptr = vty.as_pointer()
        a = context.make_array(tap)(context, builder, ap).data
        b = context.make_array(tbp)(context, builder, bp).data
        c = context.make_array(tct)(context, builder, ct).data
        n = context.cast(builder, kc, tkc, types.int64)
        off = context.make_array(toffs)(context, builder, offs).data
        base_v = context.cast(builder, base, tbase, types.int64)
        lda_v = context.cast(builder, lda, tlda, types.int64) if strided else None
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                             f"llvm.fma.v{width}{fty.intrinsic_name}")
        accs = [cgutils.alloca_once(builder, vty) for _ in range(MR_ * NV_)]
        if out:  # rows ldy apart from c0, run-time values
            c = builder.gep(c, [context.cast(builder, c0, tc0, types.int64)])
            ldy_v = context.cast(builder, ldy, tldy, types.int64)
            cptrs = [builder.bitcast(builder.gep(c, [builder.add(builder.mul(ir.Constant(i64, i // NV_), ldy_v),
                                                                 ir.Constant(i64, (i % NV_) * width))]), vptr)
                     for i in range(MR_ * NV_)]
            for p in accs:
                builder.store(ir.Constant(vty, None), p)
        else:
            cptrs = [builder.bitcast(builder.gep(c, [ir.Constant(i64, (i // NV_) * nr + (i % NV_) * width)]), vptr)
                     for i in range(MR_ * NV_)]
            with builder.if_else(context.cast(builder, accumulate, tacc, types.boolean)) as (then, otherwise):
                with then:
                    for p, q in zip(accs, cptrs, strict=True):
                        builder.store(builder.load(q, align=isz), p)
                with otherwise:
                    for p in accs:
                        builder.store(ir.Constant(vty, None), p)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)
        undef = ir.Constant(vty, ir.Undefined)
        with cgutils.for_range(builder, n) as loop:
            k = loop.index
            start = builder.add(base_v, builder.load(builder.gep(off, [k])))
            cols = []
            for v in range(NV_):
                pv = builder.gep(b, [builder.add(start, ir.Constant(i64, v * width))])
                cols.append(builder.load(builder.bitcast(pv, vptr), align=isz))
            arow = builder.mul(k, lda_v if strided else ir.Constant(i64, tap_stride or MR_))
            for r in range(MR_):
                w = builder.load(builder.gep(a, [builder.add(arow, ir.Constant(i64, r))]))
                wv = builder.shuffle_vector(builder.insert_element(undef, w, ir.Constant(ir.IntType(32), 0)), undef,
                                            splat)
                for v in range(NV_):
                    p = accs[r * NV_ + v]
                    builder.store(builder.call(fma, [wv, cols[v], builder.load(p)]), p)
        if out:  # + bias[b0 + r] when plus (an addition, as the copy-out would make it)
            bias_p = context.make_array(tbias)(context, builder, bias).data
            bias_p = builder.gep(bias_p, [context.cast(builder, b0, tb0, types.int64)])
            with builder.if_then(context.cast(builder, plus, tplus, types.boolean)):
                for r in range(MR_):
                    bv = builder.load(builder.gep(bias_p, [ir.Constant(i64, r)]))
                    bvv = builder.shuffle_vector(builder.insert_element(undef, bv, ir.Constant(ir.IntType(32), 0)),
                                                 undef, splat)
                    for v in range(NV_):
                        p = accs[r * NV_ + v]
                        builder.store(builder.fadd(builder.load(p), bvv), p)
        for p, q in zip(accs, cptrs, strict=True):
            builder.store(builder.load(p), q, align=isz)
        return context.get_dummy_value()

    return codegen


def _float_arrays(*arrays) -> int | None:
    """Item size of the common float dtype of ``arrays`` (None: not all float arrays of one dtype)."""
    if not all(isinstance(a, types.Array) for a in arrays):
        return None
    dtypes = {a.dtype for a in arrays}
    if len(dtypes) != 1 or arrays[0].dtype not in (types.float32, types.float64):
        return None
    return arrays[0].dtype.bitwidth // 8


@intrinsic
def tile_taps(typingctx, ap, s, base, offs, ct, kc, accumulate):
    """``ct[r*NR + j] (+)= sum_{k < kc} ap[k*MR + r] * s[base + offs[k] + j]`` for r < MR, j < NR.

    ``ap``, ``s``, ``ct``: 1-D C-contiguous arrays of one float dtype; ``offs``: int64 1-D;
    ``base`` and ``kc``: integers; ``accumulate``: add to ``ct`` (else overwrite it).  No bounds
    are checked: the caller guarantees ``s[base + offs[k] : ... + NR]`` lies inside ``s``.
    """
    isz = _float_arrays(ap, s, ct)
    if isz is None or not isinstance(offs, types.Array):
        return None
    return types.void(ap, s, base, offs, ct, kc, accumulate), _codegen(lanes(isz), isz)


@intrinsic
def tile_taps_narrow(typingctx, ap, s, base, offs, ct, kc, accumulate):
    """:func:`tile_taps` for the first ``lanes(itemsize)`` of its ``NR`` columns only (one vector per output channel;
    ``ct``'s rows still ``NR`` apart): for a last panel that holds at most one vector of columns, a third of the
    multiply-adds.  The sums are the same, tap by tap."""
    isz = _float_arrays(ap, s, ct)
    if isz is None or not isinstance(offs, types.Array):
        return None
    return types.void(ap, s, base, offs, ct, kc, accumulate), _codegen(lanes(isz), isz, nv=1, ldc=columns(isz))


@intrinsic
def tile_taps_out(typingctx, ap, s, base, offs, y, c0, ldy, bias, b0, plus, kc):
    """:func:`tile_taps` storing its sums straight into the output, plus the bias:
    ``y[c0 + r*ldy + j] = sum_{k < kc} ap[k*MR + r] * s[base + offs[k] + j] (+ bias[b0 + r] if plus)``, for a
    full block of ``MR`` channels whose ``NR`` columns are one run of each channel's output plane (``ldy``
    elements apart): no tile buffer to copy out.  The sums are the same, tap by tap, then the bias."""
    isz = _float_arrays(ap, s, y, bias)
    if isz is None or not isinstance(offs, types.Array):
        return None
    return (types.void(ap, s, base, offs, y, c0, ldy, bias, b0, plus, kc),
            _codegen(lanes(isz), isz, out=True))


#: Output channels of :func:`tile_taps_few`: a last block of at most this many of the ``MR`` runs this many rows.
MR_FEW = max(1, MR // 4)


@intrinsic
def tile_taps_few(typingctx, ap, s, base, offs, ct, kc, accumulate):
    """:func:`tile_taps` for the first ``MR_FEW`` of its ``MR`` output channels only (``ap`` still holds ``MR``
    weights per tap): for a last block of channels holding at most that many (lenet2's 50 channels: six blocks
    of 8 and one of 2), a quarter of the multiply-adds.  The sums are the same, tap by tap."""
    isz = _float_arrays(ap, s, ct)
    if isz is None or not isinstance(offs, types.Array):
        return None
    return (types.void(ap, s, base, offs, ct, kc, accumulate),
            _codegen(lanes(isz), isz, mr=MR_FEW, tap_stride=MR))


#: Output channels of :func:`tile_taps_half`.
MR_HALF = max(1, MR // 2)


@intrinsic
def tile_taps_half(typingctx, ap, s, base, offs, ct, kc, accumulate):
    """:func:`tile_taps_few` with ``MR_HALF`` output channels: for a last block of more than ``MR_FEW`` but at most
    that many (lenet1's 20 channels: two blocks of 8 and one of 4).  The sums are the same, tap by tap."""
    isz = _float_arrays(ap, s, ct)
    if isz is None or not isinstance(offs, types.Array):
        return None
    return (types.void(ap, s, base, offs, ct, kc, accumulate),
            _codegen(lanes(isz), isz, mr=MR_HALF, tap_stride=MR))


#: Vectors of output columns per :func:`tile_taps_lda` call (two: its user, Winograd's weight gradient, has
#: panels of input channels, and 64 of them fill two panels of 32 but only 2/3 of two panels of 48).
NV_LDA = 2


def columns_lda(itemsize: int) -> int:
    """Output columns per :func:`tile_taps_lda` call."""
    return NV_LDA * lanes(itemsize)


@intrinsic
def tile_taps_lda(typingctx, ap, lda, s, base, offs, ct, kc, accumulate):
    """:func:`tile_taps` with row ``k`` of ``ap`` at ``ap[k*lda :]`` and ``NV_LDA`` vectors of columns:
    ``ct[r*nr + j] (+)= sum_{k < kc} ap[k*lda + r] * s[base + offs[k] + j]``, ``nr = columns_lda(itemsize)``."""
    isz = _float_arrays(ap, s, ct)
    if isz is None or not isinstance(offs, types.Array):
        return None
    return (types.void(ap, lda, s, base, offs, ct, kc, accumulate),
            _codegen(lanes(isz), isz, nv=NV_LDA, strided=True))


#: Rows (of ``a``) and taps per :func:`tile_dots` call: ``DR * DT`` vector accumulators.  kernels/direct.py lays
#: its ``dy`` rows out in blocks of ``_MB`` = 4 = DR.
DR = 4
DT = 6 if VECTOR_BITS == 512 else 3 if VECTOR_BITS == 256 else 2


def _dots_codegen(width: int, isz: int):
    """LLVM IR builder of :func:`tile_dots`."""

    def codegen(context, builder, signature, args):
        out, o0, ldo, a, lda, s, base, offs, plen = args
        tout, to0, tldo, ta, tlda, ts, tbase, toffs, tplen = signature.args
        fty = context.get_value_type(ta.dtype)
        vty = ir.VectorType(fty, width)
        vptr = vty.as_pointer()
        i64 = ir.IntType(64)
        i32 = ir.IntType(32)
        po = context.make_array(tout)(context, builder, out).data
        pa = context.make_array(ta)(context, builder, a).data
        ps = context.make_array(ts)(context, builder, s).data
        poff = context.make_array(toffs)(context, builder, offs).data
        o0v, ldov, ldav, basev, n = (context.cast(builder, v, t, types.int64)
                                     for v, t in ((o0, to0), (ldo, tldo), (lda, tlda), (base, tbase), (plen, tplen)))
        fma = cgutils.get_or_insert_function(builder.module, ir.FunctionType(vty, [vty] * 3),
                                             f"llvm.fma.v{width}{fty.intrinsic_name}")
        accs = [cgutils.alloca_once(builder, vty) for _ in range(DR * DT)]
        for p in accs:
            builder.store(ir.Constant(vty, None), p)
        rows = [builder.mul(ldav, ir.Constant(i64, r)) for r in range(DR)]
        taps = [builder.add(basev, builder.load(builder.gep(poff, [ir.Constant(i64, t)]))) for t in range(DT)]
        steps = builder.udiv(n, ir.Constant(i64, width))
        with cgutils.for_range(builder, steps) as loop:
            j = builder.mul(loop.index, ir.Constant(i64, width))
            av = [builder.load(builder.bitcast(builder.gep(pa, [builder.add(rows[r], j)]), vptr), align=isz)
                  for r in range(DR)]
            sv = [builder.load(builder.bitcast(builder.gep(ps, [builder.add(taps[t], j)]), vptr), align=isz)
                  for t in range(DT)]
            for r in range(DR):
                for t in range(DT):
                    p = accs[r * DT + t]
                    builder.store(builder.call(fma, [av[r], sv[t], builder.load(p)]), p)
        for r in range(DR):
            for t in range(DT):
                v = builder.load(accs[r * DT + t])
                half = width
                while half > 1:  # pairwise halves: a fixed summation order
                    half //= 2
                    lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, half), list(range(half))))
                    hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(i32, half),
                                                                  list(range(half, 2 * half))))
                    v = builder.fadd(lo, hi)
                total = builder.extract_element(v, ir.Constant(i32, 0))
                idx = builder.add(o0v, builder.add(builder.mul(ldov, ir.Constant(i64, r)), ir.Constant(i64, t)))
                q = builder.gep(po, [idx])
                builder.store(builder.fadd(builder.load(q), total), q)
        return context.get_dummy_value()

    return codegen


@intrinsic
def tile_dots(typingctx, out, o0, ldo, a, lda, s, base, offs, plen):
    """``out[o0 + r*ldo + t] += sum_{j < plen} a[r*lda + j] * s[base + offs[t] + j]`` for r < DR, t < DT.

    ``out``, ``a``, ``s``: 1-D C-contiguous arrays of one float dtype; ``offs``: int64 1-D; the rest
    integers; ``plen`` a multiple of the vector width (``lanes(itemsize)``).  The sum over ``j`` runs
    lane-wise in vector order, then over the lanes in pairwise halves: a fixed order.  No bounds checks.
    """
    isz = _float_arrays(out, a, s)
    if isz is None or not isinstance(offs, types.Array):
        return None
    return types.void(out, o0, ldo, a, lda, s, base, offs, plen), _dots_codegen(lanes(isz), isz)


# --------------------------------------------------------------------------- vector transforms (dilation 1)
#
# LLVM does not vectorise the transform loops above (strided gathers, 16 store streams); for tiles two columns
# apart (dilation 1) these intrinsics do ``lanes`` tiles at once with explicit vectors: two loads of 2 * lanes
# consecutive elements per patch row, split into even and odd lanes by shuffles; the outputs' two columns are
# interleaved back by a shuffle into one contiguous store.  Same arithmetic, same order as the scalar code.


def _vec_args(context, builder, signature, args, *arrays):
    return [context.make_array(signature.args[i])(context, builder, args[i]).data for i in arrays]


def _i64(context, builder, signature, args, *idx):
    return [context.cast(builder, args[i], signature.args[i], types.int64) for i in idx]


def _input16_codegen(width: int, isz: int, step: int = 2):
    def codegen(context, builder, signature, args):
        src, dst = _vec_args(context, builder, signature, args, 0, 2)
        so, do, dstride, rs = _i64(context, builder, signature, args, 1, 3, 4, 5)
        fty = context.get_value_type(signature.args[0].dtype)
        vty, wty = ir.VectorType(fty, width), ir.VectorType(fty, 2 * width)
        i32 = ir.IntType(32)
        even = ir.Constant(ir.VectorType(i32, width), [2 * j for j in range(width)])
        odd = ir.Constant(ir.VectorType(i32, width), [2 * j + 1 for j in range(width)])

        def at(base, off):
            return builder.gep(base, [builder.add(off, ir.Constant(off.type, 0))])

        qty = ir.VectorType(fty, 4 * width)
        lanes4 = [ir.Constant(ir.VectorType(i32, width), [4 * j + r for j in range(width)]) for r in range(4)]
        t = []
        for i in range(4):
            row = builder.add(so, builder.mul(rs, ir.Constant(rs.type, i)))
            if step == 2:  # columns 2j + k: even / odd lanes of 2 * width elements at 0 and at 2
                l0 = builder.load(builder.bitcast(at(src, row), wty.as_pointer()), align=isz)
                l1 = builder.load(builder.bitcast(at(src, builder.add(row, ir.Constant(row.type, 2))),
                                                  wty.as_pointer()), align=isz)
                a0 = builder.shuffle_vector(l0, l0, even)
                a1 = builder.shuffle_vector(l0, l0, odd)
                a2 = builder.shuffle_vector(l1, l1, even)
                a3 = builder.shuffle_vector(l1, l1, odd)
            else:  # columns 4j + 2k: every fourth of 4 * width elements at 0 (k = 0, 1) and at 3 (k = 2, 3)
                l0 = builder.load(builder.bitcast(at(src, row), qty.as_pointer()), align=isz)
                l1 = builder.load(builder.bitcast(at(src, builder.add(row, ir.Constant(row.type, 3))),
                                                  qty.as_pointer()), align=isz)
                a0 = builder.shuffle_vector(l0, l0, lanes4[0])
                a1 = builder.shuffle_vector(l0, l0, lanes4[2])
                a2 = builder.shuffle_vector(l1, l1, lanes4[1])
                a3 = builder.shuffle_vector(l1, l1, lanes4[3])
            t.append((builder.fsub(a0, a2), builder.fadd(a1, a2), builder.fsub(a2, a1), builder.fsub(a1, a3)))
        vals = []
        for k in range(4):
            vals.append((0, k, builder.fsub(t[0][k], t[2][k])))
            vals.append((1, k, builder.fadd(t[1][k], t[2][k])))
            vals.append((2, k, builder.fsub(t[2][k], t[1][k])))
            vals.append((3, k, builder.fsub(t[1][k], t[3][k])))
        for i, k, val in vals:
            off = builder.add(do, builder.mul(dstride, ir.Constant(dstride.type, 4 * i + k)))
            builder.store(val, builder.bitcast(at(dst, off), vty.as_pointer()), align=isz)
        return context.get_dummy_value()

    return codegen


def _output16_codegen(width: int, isz: int, step: int = 2):
    def codegen(context, builder, signature, args):
        mb, y = _vec_args(context, builder, signature, args, 0, 3)
        mo, s, yo, low = _i64(context, builder, signature, args, 1, 2, 4, 5)
        fty = context.get_value_type(signature.args[0].dtype)
        vty, wty = ir.VectorType(fty, width), ir.VectorType(fty, 2 * width)
        i32 = ir.IntType(32)
        bv = context.cast(builder, args[6], signature.args[6], signature.args[0].dtype)
        plus = context.cast(builder, args[7], signature.args[7], types.boolean)
        bias = builder.shuffle_vector(builder.insert_element(ir.Constant(wty, ir.Undefined), bv, ir.Constant(i32, 0)),
                                      ir.Constant(wty, ir.Undefined), ir.Constant(ir.VectorType(i32, 2 * width), 0))
        inter = ir.Constant(ir.VectorType(i32, 2 * width), [j // 2 + (j % 2) * width for j in range(2 * width)])
        m = []
        for pos in range(16):
            off = builder.add(mo, builder.mul(s, ir.Constant(s.type, pos)))
            m.append(builder.load(builder.bitcast(builder.gep(mb, [off]), vty.as_pointer()), align=isz))

        def pair(r0, r1, r2, first):
            # rows r0, r1, r2 of M combined as (m_r0 + m_r1 + m_r2) or (m_r0 - m_r1 - m_r2), per column k
            cols = []
            for k in range(4):
                if first:
                    cols.append(builder.fadd(builder.fadd(m[4 * r0 + k], m[4 * r1 + k]), m[4 * r2 + k]))
                else:
                    cols.append(builder.fsub(builder.fsub(m[4 * r0 + k], m[4 * r1 + k]), m[4 * r2 + k]))
            left = builder.fadd(builder.fadd(cols[0], cols[1]), cols[2])
            right = builder.fsub(builder.fsub(cols[1], cols[2]), cols[3])
            val = builder.shuffle_vector(left, right, inter)
            return builder.select(plus, builder.fadd(val, bias), val)  # (strict IEEE: the bias after the sum)

        if step == 2:
            def put(val, at):
                builder.store(val, builder.bitcast(builder.gep(y, [at]), wty.as_pointer()), align=isz)
        else:  # tiles four columns apart: the pairs spread to every other element, stored under a mask (the
            # other phase's outputs in between belong to other tiles, maybe another task's)
            qty = ir.VectorType(fty, 4 * width)
            mty = ir.VectorType(ir.IntType(1), 4 * width)
            spread = ir.Constant(ir.VectorType(i32, 4 * width), [p // 2 for p in range(4 * width)])
            mask = ir.Constant(mty, [1 - p % 2 for p in range(4 * width)])
            mstore = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), [qty, qty.as_pointer(), i32, mty]),
                f"llvm.masked.store.v{4 * width}{fty.intrinsic_name}.p0")

            def put(val, at):
                wide = builder.shuffle_vector(val, val, spread)
                builder.call(mstore, [wide, builder.bitcast(builder.gep(y, [at]), qty.as_pointer()),
                                      ir.Constant(i32, isz), mask])

        put(pair(0, 1, 2, True), yo)
        has_low = builder.icmp_signed(">", low, ir.Constant(low.type, 0))
        with builder.if_then(has_low):
            put(pair(1, 2, 3, False), builder.add(yo, low))
        return context.get_dummy_value()

    return codegen


def _transform_intrinsic(name: str, codegen, arrays: tuple[int, int], width, step: int, doc: str):
    """A numba intrinsic of six arguments (two of them, at ``arrays``, float arrays of one dtype) whose code is
    ``codegen(width(itemsize), itemsize, step)``: the vector transforms below differ only in these.  The output
    transforms take two more: a bias value and whether to add it."""

    def typed(args):
        isz = _float_arrays(*(args[i] for i in arrays))
        if isz is None:
            return None
        return types.void(*args), codegen(width(isz), isz, step)

    if codegen is _output16_codegen:
        def typer(typingctx, a0, a1, a2, a3, a4, a5, a6, a7):
            return typed((a0, a1, a2, a3, a4, a5, a6, a7))
    else:
        def typer(typingctx, a0, a1, a2, a3, a4, a5):
            return typed((a0, a1, a2, a3, a4, a5))

    typer.__name__ = typer.__qualname__ = name
    typer.__doc__ = doc
    return intrinsic(typer)


#: ``input_tiles(src, so, dst, do, dstride, rs)``: ``lanes`` tiles two columns apart,
#: ``dst[do + pos * dstride + j] = (Bᵀ d_j B)[pos]`` with patch ``d_j[i][k] = src[so + i * rs + 2 * j + k]``
#: (no bounds checks).
input_tiles = _transform_intrinsic("input_tiles", _input16_codegen, (0, 2), lanes, 2, "lanes tiles two columns apart")
#: :func:`input_tiles` for ``lanes_narrow(itemsize)`` tiles.
input_tiles_narrow = _transform_intrinsic("input_tiles_narrow", _input16_codegen, (0, 2), lanes_narrow, 2,
                                          "lanes_narrow tiles two columns apart")
#: :func:`input_tiles` for ``lanes4(itemsize)`` tiles four columns apart with patch columns two apart (dilation 2):
#: ``d_j[i][k] = src[so + i * rs + 4 * j + 2 * k]`` (reads exactly ``src[so + i * rs :][:4 * lanes4 + 3]``).
input_tiles4 = _transform_intrinsic("input_tiles4", _input16_codegen, (0, 2), lanes4, 4,
                                    "lanes4 tiles four columns apart, patch columns two apart")
#: ``output_tiles(mb, mo, s, y, yo, low, bv, plus)``: ``lanes`` tiles two columns apart, both columns inside:
#: ``y[yo + 2 j + v] (, y[yo + low + 2 j + v] if low > 0) = (Aᵀ M_j A)[u, v] (+ bv if plus)`` with
#: ``M_j[pos] = mb[mo + pos * s + j]`` (no bounds checks; the bias is one addition after the sum).
output_tiles = _transform_intrinsic("output_tiles", _output16_codegen, (0, 3), lanes, 2,
                                    "lanes tiles two columns apart")
#: :func:`output_tiles` for ``lanes_narrow(itemsize)`` tiles.
output_tiles_narrow = _transform_intrinsic("output_tiles_narrow", _output16_codegen, (0, 3), lanes_narrow, 2,
                                           "lanes_narrow tiles two columns apart")
#: :func:`output_tiles` for ``lanes4(itemsize)`` tiles four columns apart with output columns two apart
#: (dilation 2): writes ``y[yo + 4 j + 2 v]`` (and ``low`` below) only, under a mask.
output_tiles4 = _transform_intrinsic("output_tiles4", _output16_codegen, (0, 3), lanes4, 4,
                                     "lanes4 tiles four columns apart, output columns two apart")


# --------------------------------------------------------------------------- vector width of compiled loops


def _wide_codegen(context, builder, signature, args):
    if VECTOR_BITS == 512:
        # llvmlite's attribute set accepts only flag attributes; LLVM reads this string attribute as clang's
        # -mprefer-vector-width=512 (set.add: past llvmlite's check of known flag names)
        set.add(builder.function.attributes, '"prefer-vector-width"="512"')
    return context.get_dummy_value()


@intrinsic
def wide_vectors(typingctx):
    """Let LLVM vectorise the calling kernel's loops with 512-bit vectors where the CPU has them.

    LLVM's loop vectoriser prefers 256-bit vectors on AVX-512 CPUs (its tuning for Skylake-X and later,
    which clang overrides with ``-mprefer-vector-width=512``): "direct"'s loop kernels then ran at half the
    machine's multiply-add width.  The function attribute applies to the kernel it is called in (a callee
    is optimised on its own before it is inlined)."""
    return types.void(), _wide_codegen
