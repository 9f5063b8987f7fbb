"""Argument validation and normalisation shared by every public function.

Everything a user passes goes through here before any kernel runs, so kernels may
assume valid, normalised input.  The output-size rule (:func:`out_size`) and the
padding normaliser (:func:`conv_padding`) exist only here.

Every error names the argument, the value received and what is accepted.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

Pair = tuple[int, int]
Pad4 = tuple[int, int, int, int]  # (top, bottom, left, right)

PAD_WORDS = ("valid", "same")

#: Largest int accepted for any size, stride, pad, dilation or group count.  Every such value reaches the
#: kernels as a 64-bit int, and this bound leaves headroom so a sum of two of them cannot overflow.
MAX_INT = 2**62

#: Largest element count of a float64 array NumPy can describe (its own limit: size * itemsize must fit an
#: intp, with zero-length axes counted as 1).  A result or scratch array past it is rejected by name.
MAX_ELEMENTS = np.iinfo(np.intp).max // 8


class ConvGeometry(NamedTuple):
    """Normalised convolution parameters, as kernels receive them."""

    stride: Pair
    pad: Pad4  # (top, bottom, left, right)
    dilation: Pair
    groups: int


class PoolGeometry(NamedTuple):
    """Normalised pooling parameters, as kernels receive them."""

    size: Pair
    stride: Pair
    pad: Pair
    dilation: Pair
    out_hw: Pair


# --------------------------------------------------------------------------- scalars


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_))


def _scalar0d(value: Any) -> Any:
    """A 0-d array as its scalar (so ``np.array(2)`` is treated like ``2``, not as a sequence)."""
    if isinstance(value, np.ndarray) and value.ndim == 0:
        return value[()]
    return value


def as_int(name: str, value: Any, minimum: int) -> int:
    """``value`` as a Python int >= ``minimum`` (bools are not ints here)."""
    if not _is_int(value):
        raise TypeError(f"{name} must be an int >= {minimum}; got {value!r} of type {type(value).__name__}")
    if value < minimum or value > MAX_INT:
        raise ValueError(f"{name} must be an int >= {minimum} (and <= 2**62); got {value!r}")
    return int(value)


def int_pair(name: str, value: Any, minimum: int) -> Pair:
    """An int or a pair ``(h, w)`` of ints, each >= ``minimum``, as a pair."""
    what = f"an int or a pair (h, w) of ints >= {minimum}"
    value = _scalar0d(value)
    if isinstance(value, (tuple, list, np.ndarray)):
        items = [_scalar0d(v) for v in value]
        if len(items) != 2:
            raise ValueError(f"{name} must be {what}; got {value!r}")
    else:
        items = [value, value]
    for item in items:
        if not _is_int(item):
            raise TypeError(f"{name} must be {what}; got {value!r}")
        if item < minimum or item > MAX_INT:
            raise ValueError(f"{name} must be {what} (and <= 2**62); got {value!r}")
    return int(items[0]), int(items[1])


# --------------------------------------------------------------------------- sizes


def out_size(length: int, k: int, s: int, d: int, before: int, after: int, ceil_mode: bool = False) -> int:
    """The one output-size rule of every op (PyTorch's, including ``ceil_mode``).

    ``floor_or_ceil((length + before + after - d*(k-1) - 1) / s) + 1``; with ``ceil_mode``
    the last window must start inside the input or the leading padding.  Returns a
    value <= 0 when no window fits.  As in PyTorch, ``ceil_mode`` rounds a negative span
    (a window up to ``s - 1`` longer than the padded input) up to one output.
    """
    span = length + before + after - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1 if span >= 0 else 0
    o = -(-span // s) + 1
    if o > 0 and (o - 1) * s >= length + before:
        o -= 1
    return max(o, 0)


def transposed_out_size(length: int, k: int, s: int, d: int, before: int, after: int, output_pad: int) -> int:
    """Output length of a transposed convolution: the largest input of the conv2d it is the adjoint of."""
    return (length - 1) * s - before - after + d * (k - 1) + output_pad + 1


def _same_total(length: int, k: int, s: int, d: int) -> int:
    return max((-(-length // s) - 1) * s + d * (k - 1) + 1 - length, 0)


def conv_padding(pad: Any, in_hw: Pair, k_hw: Pair, stride: Pair, dilation: Pair, name: str = "pad") -> Pad4:
    """Normalise every padding form to ``(top, bottom, left, right)``.

    Accepted: an int; a pair ``(ph, pw)``; a pair of pairs ``((top, bottom), (left, right))``;
    ``"valid"`` (no padding); ``"same"`` (output = ceil(input / stride); total padding
    ``max((ceil(L/s) - 1)*s + d*(k-1) + 1 - L, 0)`` with the odd pixel at the bottom/right).
    """
    what = (
        "an int >= 0, a pair (ph, pw), a pair of pairs ((top, bottom), (left, right)), "
        f"or one of {PAD_WORDS!r}"
    )
    pad = _scalar0d(pad)
    if isinstance(pad, str):
        word = pad.lower()
        if word == "valid":
            return (0, 0, 0, 0)
        if word == "same":
            out = []
            for ax in range(2):
                total = _same_total(in_hw[ax], k_hw[ax], stride[ax], dilation[ax])
                out += [total // 2, total - total // 2]
            return tuple(out)  # type: ignore[return-value]
        raise ValueError(f"{name} must be {what}; got the unknown word {pad!r}")
    if isinstance(pad, (tuple, list, np.ndarray)):
        items = [_scalar0d(i) for i in pad]
        if len(items) != 2:
            raise ValueError(f"{name} must be {what}; got {pad!r}")
        if all(isinstance(i, (tuple, list, np.ndarray)) for i in items):
            flat = [_scalar0d(v) for i in items for v in list(i)]
            if any(len(list(i)) != 2 for i in items):
                raise ValueError(f"{name} must be {what}; got {pad!r}")
        elif any(isinstance(i, (tuple, list, np.ndarray)) for i in items):
            raise ValueError(f"{name} must be {what}; got {pad!r}")
        else:
            flat = [items[0], items[0], items[1], items[1]]
    else:
        flat = [pad] * 4
    for v in flat:
        if not _is_int(v):
            raise TypeError(f"{name} must be {what}; got {pad!r}")
        if v < 0:
            raise ValueError(f"{name} must be {what} (no negative padding); got {pad!r}")
        if v > MAX_INT:
            raise ValueError(f"{name} must be {what} (each <= 2**62); got {pad!r}")
    return tuple(int(v) for v in flat)  # type: ignore[return-value]


# --------------------------------------------------------------------------- arrays and dtypes

_FLOAT_OUT = {np.dtype(np.float16): np.dtype(np.float32), np.dtype(np.float32): np.dtype(np.float32),
              np.dtype(np.float64): np.dtype(np.float64)}


def as_array(name: str, value: Any, ndim: int | None = None, layout: str = "") -> np.ndarray:
    """``value`` as a NumPy array of a real or integer dtype (any memory layout)."""
    if isinstance(value, np.ndarray):
        arr = value
    else:
        try:
            arr = np.asarray(value)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be an array-like of numbers; got {type(value).__name__} ({exc})") from None
    # byte order does not matter (a big-endian float64 is a float64): compare the native-order dtype
    if arr.dtype.kind not in "biuf" or arr.dtype.kind == "f" and arr.dtype.newbyteorder("=") not in _FLOAT_OUT:
        raise TypeError(
            f"{name} must have a bool, integer, float16, float32 or float64 dtype; got dtype {arr.dtype}"
        )
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array {layout}; got shape {arr.shape} ({arr.ndim}-D)")
    return arr


def compute_dtype(*arrays: np.ndarray | None) -> np.dtype:
    """NumPy promotion, then: integers and bools compute in float64, float16 in float32."""
    dt = np.result_type(*[a.dtype for a in arrays if a is not None]).newbyteorder("=")
    if dt.kind in "biu":
        return np.dtype(np.float64)
    return _FLOAT_OUT[dt]


def prepare(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """A C-contiguous, writeable array of ``dtype`` with the values of ``a`` (copies only when needed).

    Kernels always see this one layout, so each kernel compiles once per dtype.
    """
    if a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable and a.flags.aligned:
        return a
    return np.array(a, dtype=dtype, order="C", copy=True)


def shape_of(name: str, value: Any, ndim: int, layout: str) -> tuple[int, ...]:
    """A shape tuple given either as an array or as a sequence of ints."""
    if isinstance(value, np.ndarray) or not (
        isinstance(value, (tuple, list)) and all(_is_int(v) for v in value)
    ):
        return as_array(name, value, ndim, layout).shape
    shape = tuple(int(v) for v in value)
    if len(shape) != ndim:
        raise ValueError(f"{name} must be a {ndim}-D array {layout} or its shape; got shape {shape}")
    if any(v < 0 or v > MAX_INT for v in shape):
        raise ValueError(f"{name} must be a shape of non-negative ints (each <= 2**62); got {shape}")
    return shape


def check_array_size(what: str, shape: tuple[int, ...], cause: str) -> None:
    """Raise ValueError naming ``cause`` if an array of ``shape`` is larger than any array NumPy can describe."""
    elements = 1
    for v in shape:
        elements *= max(int(v), 1)
    if elements > MAX_ELEMENTS:
        raise ValueError(
            f"{cause} would make {what} of shape {tuple(shape)}, larger than any array can be "
            f"(more than 2**63 bytes)"
        )


def check_shape(name: str, arr: np.ndarray, expected: tuple[int, ...], why: str) -> None:
    if tuple(arr.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} ({why}); got shape {tuple(arr.shape)}")


# --------------------------------------------------------------------------- convolution geometry

X_LAYOUT = "(N, C, H, W)"


def _check_spatial(name: str, shape: tuple[int, ...], layout: str) -> None:
    if any(v == 0 for v in shape[1:]):
        raise ValueError(f"{name} must have non-zero channel and spatial sizes {layout}; got shape {shape}")


def window_out_hw(
    kname: str, x_shape: tuple[int, ...], k_hw: Pair, stride: Pair, dilation: Pair, pads: Pad4, pad_arg: Any
) -> Pair:
    """Output (OH, OW) of sliding a ``k_hw`` window over the padded input; the window must fit."""
    out = []
    for ax in range(2):
        length, k = x_shape[2 + ax], k_hw[ax]
        before, after = pads[2 * ax], pads[2 * ax + 1]
        eff = dilation[ax] * (k - 1) + 1
        if eff > length + before + after:
            axis = "height" if ax == 0 else "width"
            raise ValueError(
                f"{kname} is larger than the padded input along the {axis}: kernel extent dilation*(K-1)+1 = {eff} "
                f"> padded input {length} + {before} + {after} = {length + before + after} "
                f"(kernel {k_hw}, x shape {tuple(x_shape)}, pad={pad_arg!r}, dilation={dilation})"
            )
        out.append(out_size(length, k, stride[ax], dilation[ax], before, after))
    padded = (x_shape[0], x_shape[1], x_shape[2] + pads[0] + pads[1], x_shape[3] + pads[2] + pads[3])
    check_array_size("the padded input", padded, f"pad={pad_arg!r} with x of shape {tuple(x_shape)}")
    return out[0], out[1]


def _typed_key(value: Any) -> Any:
    """A cache key that tells apart values that compare equal but validate differently (``True`` and ``1``,
    ``2.0`` and ``2``); raises TypeError for unhashable values (lists, arrays), which are then not cached."""
    if isinstance(value, tuple):
        return (tuple, tuple(_typed_key(v) for v in value))
    hash(value)
    return (type(value), value)


def _remembered(func: Callable[..., Any]) -> Callable[..., Any]:
    """``func`` (a pure validation) remembering the results of valid calls by the arguments' types and values
    (:func:`_typed_key`; up to 256, then forgotten at once); invalid calls raise every time, and calls with
    unhashable or keyword arguments are not remembered."""
    cache: dict[Any, Any] = {}

    @functools.wraps(func)
    def remembered(*args: Any, **kwargs: Any) -> Any:
        if kwargs:
            return func(*args, **kwargs)
        try:
            key = _typed_key(args)
        except TypeError:
            return func(*args)
        hit = cache.get(key)
        if hit is None:
            hit = func(*args)
            if len(cache) >= 256:
                cache.clear()
            cache[key] = hit
        return hit

    return remembered


@_remembered
def conv_geometry(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: Any,
    pad: Any,
    dilation: Any,
    groups: Any,
) -> tuple[ConvGeometry, tuple[int, int, int, int]]:
    """Validate a conv2d call; return its geometry and the output shape ``(N, M, OH, OW)``.

    Valid calls are remembered (:func:`_remembered`): the validation took ~10-20 us, a few percent of a small
    layer's call."""
    _check_spatial("x", x_shape, X_LAYOUT)
    if any(v == 0 for v in w_shape):
        raise ValueError(f"w must have non-zero sizes (M, C // groups, KH, KW); got shape {w_shape}")
    stride_p = int_pair("stride", stride, 1)
    dil_p = int_pair("dilation", dilation, 1)
    g = as_int("groups", groups, 1)
    n, c, h, wd = x_shape
    m, cg, kh, kw = w_shape
    if c % g:
        raise ValueError(f"groups must divide the input channels C={c} of x; got groups={g}")
    if m % g:
        raise ValueError(f"groups must divide the output channels M={m} of w (w.shape[0]); got groups={g}")
    if cg * g != c:
        raise ValueError(
            f"w.shape[1] must equal C // groups = {c} // {g} = {c // g} (x has C={c} channels); "
            f"got w of shape {w_shape}"
        )
    pads = conv_padding(pad, (h, wd), (kh, kw), stride_p, dil_p)
    oh, ow = window_out_hw("w", x_shape, (kh, kw), stride_p, dil_p, pads, pad)
    check_array_size("the output", (n, m, oh, ow), f"x of shape {tuple(x_shape)} with w of shape {tuple(w_shape)}")
    return ConvGeometry(stride_p, pads, dil_p, g), (n, m, oh, ow)


def transposed_geometry(
    x_shape: tuple[int, ...],
    w_shape: tuple[int, ...],
    stride: Any,
    pad: Any,
    output_pad: Any,
    dilation: Any,
    groups: Any,
) -> tuple[ConvGeometry, tuple[int, int, int, int]]:
    """Validate a conv_transpose2d call; return its geometry and the output shape ``(N, M, OH, OW)``.

    The geometry is that of the conv2d whose adjoint this is (input: the output here).
    ``pad="same"`` makes the output ``input * stride`` (TensorFlow's transposed "same"),
    the adjoint of conv2d with ``pad="same"`` on that larger input.
    """
    _check_spatial("x", x_shape, X_LAYOUT)
    if any(v == 0 for v in w_shape):
        raise ValueError(f"w must have non-zero sizes (C, M // groups, KH, KW); got shape {w_shape}")
    stride_p = int_pair("stride", stride, 1)
    dil_p = int_pair("dilation", dilation, 1)
    opad = int_pair("output_pad", output_pad, 0)
    g = as_int("groups", groups, 1)
    n, c, h, wd = x_shape
    cw, mg, kh, kw = w_shape
    if cw != c:
        raise ValueError(
            f"w.shape[0] must equal the input channels C={c} of x (w is (C, M // groups, KH, KW)); "
            f"got w of shape {w_shape}"
        )
    if c % g:
        raise ValueError(f"groups must divide the input channels C={c} of x; got groups={g}")
    for ax in range(2):
        if opad[ax] >= max(stride_p[ax], dil_p[ax]):
            raise ValueError(
                f"output_pad must be smaller than max(stride, dilation) on each axis = "
                f"({max(stride_p[0], dil_p[0])}, {max(stride_p[1], dil_p[1])}); got output_pad={output_pad!r}"
            )
    pad = _scalar0d(pad)
    if isinstance(pad, str) and pad.lower() == "same":
        if opad != (0, 0):
            raise ValueError(f"output_pad must be 0 with pad='same' (the output is input * stride); got {output_pad!r}")
        pads = []
        opad_l = []
        for ax, (length, k) in enumerate(((h, kh), (wd, kw))):
            total = _same_total(length * stride_p[ax], k, stride_p[ax], dil_p[ax])
            pads += [total // 2, total - total // 2]
            opad_l.append(length * stride_p[ax] - transposed_out_size(length, k, stride_p[ax], dil_p[ax],
                                                                     total // 2, total - total // 2, 0))
        pads_t: Pad4 = tuple(pads)  # type: ignore[assignment]
        opad = (opad_l[0], opad_l[1])
    else:
        # "valid" and numeric forms; "same" handled above (it depends on the output size).
        pads_t = conv_padding(pad, (h, wd), (kh, kw), stride_p, dil_p)
    out = []
    for ax, (length, k) in enumerate(((h, kh), (wd, kw))):
        o = transposed_out_size(length, k, stride_p[ax], dil_p[ax], pads_t[2 * ax], pads_t[2 * ax + 1], opad[ax])
        if o < 1:
            raise ValueError(
                f"pad={pad!r} is too large: the output size (L-1)*stride - pad_before - pad_after "
                f"+ dilation*(K-1) + output_pad + 1 would be {o} along the {'height' if ax == 0 else 'width'} "
                f"(x shape {x_shape}, w shape {w_shape}); it must be >= 1"
            )
        out.append(o)
    cause = f"stride={stride!r}, pad={pad!r}, output_pad={output_pad!r}, dilation={dilation!r}"
    padded = (n, mg * g, out[0] + pads_t[0] + pads_t[1], out[1] + pads_t[2] + pads_t[3])
    check_array_size("the (padded) output", padded, f"{cause} with x of shape {tuple(x_shape)}")
    return ConvGeometry(stride_p, pads_t, dil_p, g), (n, mg * g, out[0], out[1])


# --------------------------------------------------------------------------- pooling geometry


def pool_geometry(
    x_shape: tuple[int, ...],
    size: Any,
    stride: Any,
    pad: Any,
    dilation: Any,
    ceil_mode: Any,
) -> PoolGeometry:
    """Validate a pooling call (PyTorch's rules); return its normalised geometry."""
    _check_spatial("x", x_shape, X_LAYOUT)
    size_p = int_pair("size", size, 1)
    stride_p = size_p if stride is None else int_pair("stride", stride, 1)
    pad_p = int_pair("pad", pad, 0)
    dil_p = int_pair("dilation", dilation, 1)
    if not isinstance(ceil_mode, (bool, np.bool_)):
        raise TypeError(f"ceil_mode must be a bool; got {ceil_mode!r}")
    for ax in range(2):
        if pad_p[ax] > size_p[ax] // 2:
            raise ValueError(
                f"pad must be at most half the window size {size_p} on each axis "
                f"(<= {(size_p[0] // 2, size_p[1] // 2)}); got pad={pad!r}"
            )
    out = []
    for ax in range(2):
        o = out_size(x_shape[2 + ax], size_p[ax], stride_p[ax], dil_p[ax], pad_p[ax], pad_p[ax], bool(ceil_mode))
        if o < 1:
            raise ValueError(
                f"size={size!r} (dilation={dilation!r}) does not fit the padded input {x_shape[2:]} with pad={pad!r}: "
                f"the output would be empty"
            )
        out.append(o)
    # With a single output along an axis the stride plays no part (only the window at 0 exists), so the kernels get 1
    # there: a stride beyond the input then cannot size their buffers (stride=2**31 returned garbage, 2**40 crashed).
    stride_p = (stride_p[0] if out[0] > 1 else 1, stride_p[1] if out[1] > 1 else 1)
    return PoolGeometry(size_p, stride_p, pad_p, dil_p, (out[0], out[1]))
