"""Layer objects over fastconv's functions: the textbook's interface and a PyTorch-style one.

Two families, both thin wrappers (no kernel code here, and no optimizer step: ``backward``
only computes and stores gradients):

* :class:`Convolution` and :class:`Pooling` have exactly the interface of the layer classes
  in "Deep Learning from Scratch" (``common/layers.py``): ``forward(x)``, ``backward(dout)``
  and the attributes ``W``, ``b``, ``dW``, ``db``.  A textbook network such as
  ``SimpleConvNet`` switches to fastconv by importing these two names from here instead.
* :class:`Conv2d`, :class:`ConvTranspose2d`, :class:`MaxPool2d` and :class:`AvgPool2d` take
  PyTorch's constructor arguments (same names, same order) and initialise weights as
  PyTorch does.  ``forward(x)`` returns the output; ``backward(dy)`` returns ``dx`` and stores
  the parameter gradients in ``weight_grad`` and ``bias_grad`` (replacing, not accumulating).

Every layer keeps a reference to the last ``forward`` input for ``backward``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._dispatch import accepted_names
from ._params import as_int, conv_padding, int_pair
from .conv import conv2d, conv2d_backward, conv_transpose2d, conv_transpose2d_backward
from .pool import avg_pool2d, avg_pool2d_backward, max_pool2d, max_pool2d_backward

__all__ = ["AvgPool2d", "Conv2d", "ConvTranspose2d", "Convolution", "MaxPool2d", "Pooling"]

_LAYER_DTYPES = ("float32", "float64")


def _need_forward(layer: object, stored: Any) -> None:
    if stored is None:
        raise RuntimeError(f"{type(layer).__name__}.backward was called before forward")


# --------------------------------------------------------------------------- the textbook's interface


class Convolution:
    """Convolution layer with the textbook's interface (``common/layers.py``), computed by :func:`fastconv.conv2d`.

    Parameters
    ----------
    W : ndarray, shape (FN, C, FH, FW)
        Filters.  Kept by reference: in-place updates (``W -= lr * dW``) and reassigning
        ``layer.W`` both take effect at the next ``forward``.
    b : ndarray, shape (FN,)
        Bias, kept by reference like ``W``.
    stride : int or (int, int)
    pad : int or any padding form :func:`fastconv.conv2d` accepts (zero padding, as the textbook).

    Attributes
    ----------
    W, b : the parameters.
    dW, db : gradients from the last :meth:`backward` (``None`` before it).
    x : the last input of :meth:`forward`.

    Notes
    -----
    Results equal the textbook's im2col/GEMM layer up to floating-point rounding (different
    summation order).  One difference: the textbook's ``im2col`` always builds a float64
    matrix, so it returns float64 even for float32 ``x`` and ``W``; fastconv keeps float32 as
    float32 (mixed float32/float64 inputs compute in float64, as NumPy promotes).
    """

    def __init__(self, W: np.ndarray, b: np.ndarray, stride: int | tuple[int, int] = 1, pad: Any = 0) -> None:
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.x: np.ndarray | None = None
        self.dW: np.ndarray | None = None
        self.db: np.ndarray | None = None

    def forward(self, x: ArrayLike) -> np.ndarray:
        """``conv2d(x, W, stride, pad) + b``, shape (N, FN, OH, OW)."""
        out = conv2d(x, self.W, self.stride, self.pad, bias=self.b)
        self.x = x  # type: ignore[assignment]
        return out

    def backward(self, dout: ArrayLike) -> np.ndarray:
        """Store ``dW`` and ``db``; return ``dx`` (the gradient with respect to the last forward input)."""
        _need_forward(self, self.x)
        dx, self.dW, self.db = conv2d_backward(dout, self.x, self.W, self.stride, self.pad)
        return dx


class Pooling:
    """Max-pooling layer with the textbook's interface (``common/layers.py``), computed by :func:`fastconv.max_pool2d`.

    Parameters
    ----------
    pool_h, pool_w : int
        Window size.
    stride : int or (int, int), default 1
        As in the textbook, the default is 1 (not the window size).
    pad : int or (int, int), default 0
        At most half the window on each axis (PyTorch's rule).

    Attributes
    ----------
    x : the last input of :meth:`forward`.
    indices : int64 ndarray, shape of the output
        Flat position ``h * W + w`` of each window's maximum in its input plane (PyTorch's
        ``return_indices`` layout; the textbook's ``arg_max`` is a position inside the window
        instead).

    Notes
    -----
    Padding: fastconv pads with ``-inf`` (padding never wins the maximum), as PyTorch does.
    The textbook's ``im2col`` pads with zeros, so there a window that covers padding and
    holds only negative values returns 0 instead of its maximum.  With ``pad=0`` the two agree
    exactly (including ties: the first maximum in row-major window order wins).  The
    textbook's ``Pooling`` also computes its output size without ``pad``, which breaks for most
    ``pad > 0``; fastconv uses the usual ``(H + 2*pad - pool_h) // stride + 1``.
    """

    def __init__(self, pool_h: int, pool_w: int, stride: int | tuple[int, int] = 1, pad: int | tuple[int, int] = 0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x: np.ndarray | None = None
        self.indices: np.ndarray | None = None

    def forward(self, x: ArrayLike) -> np.ndarray:
        """The maximum of every ``pool_h`` x ``pool_w`` window, shape (N, C, OH, OW)."""
        out, indices = max_pool2d(
            x, (self.pool_h, self.pool_w), self.stride, self.pad, return_indices=True
        )
        self.x, self.indices = x, indices  # type: ignore[assignment]
        return out

    def backward(self, dout: ArrayLike) -> np.ndarray:
        """Return ``dx``: each ``dout`` value added to the position of its window's maximum."""
        _need_forward(self, self.x)
        return max_pool2d_backward(
            dout, np.shape(self.x), (self.pool_h, self.pool_w), self.stride, self.pad, indices=self.indices
        )


# --------------------------------------------------------------------------- PyTorch-style layers


def _layer_dtype(dtype: Any) -> np.dtype:
    try:
        dt = None if dtype is None else np.dtype(dtype)  # np.dtype(None) would be float64
    except TypeError:
        dt = None
    if dt is None or dt.name not in _LAYER_DTYPES:
        raise ValueError(f"dtype must be one of {_LAYER_DTYPES!r}; got {dtype!r}")
    return dt


def _rng(seed: Any) -> np.random.Generator:
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise TypeError(f"seed must be None, an int >= 0 or a numpy.random.Generator; got {seed!r}")
    return np.random.default_rng(int(seed))


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool; got {value!r}")
    return bool(value)


def _kaiming_uniform(
    rng: np.random.Generator, w_shape: tuple[int, ...], n_bias: int | None, dtype: np.dtype
) -> tuple[np.ndarray, np.ndarray | None]:
    """PyTorch's default conv initialisation, ``kaiming_uniform_(a=sqrt(5))``: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    ``fan_in = w_shape[1] * KH * KW`` as PyTorch computes it (for a transposed layer that is
    ``out_channels // groups * KH * KW``).  The bias (``n_bias`` values, or None) uses the same
    bound.  The weight is drawn first, then the bias.
    """
    fan_in = w_shape[1] * w_shape[2] * w_shape[3]
    bound = 1.0 / math.sqrt(fan_in)
    w = rng.uniform(-bound, bound, size=w_shape).astype(dtype)
    b = None if n_bias is None else rng.uniform(-bound, bound, size=n_bias).astype(dtype)
    return w, b


class _ConvBase:
    """Shared construction of Conv2d and ConvTranspose2d."""

    weight: np.ndarray
    bias: np.ndarray | None

    def _init_params(
        self,
        in_channels: Any,
        out_channels: Any,
        kernel_size: Any,
        stride: Any,
        padding: Any,
        dilation: Any,
        groups: Any,
        bias: Any,
        dtype: Any,
        seed: Any,
        strategy: str,
        transposed: bool,
    ) -> None:
        self.in_channels = as_int("in_channels", in_channels, 1)
        self.out_channels = as_int("out_channels", out_channels, 1)
        self.kernel_size = int_pair("kernel_size", kernel_size, 1)
        self.stride = int_pair("stride", stride, 1)
        self.dilation = int_pair("dilation", dilation, 1)
        self.groups = as_int("groups", groups, 1)
        if self.in_channels % self.groups:
            raise ValueError(f"groups must divide in_channels={self.in_channels}; got groups={self.groups}")
        if self.out_channels % self.groups:
            raise ValueError(f"groups must divide out_channels={self.out_channels}; got groups={self.groups}")
        # Checks the padding's form (the sizes are placeholders; "same" is resolved per input in forward).
        conv_padding(padding, (1, 1), self.kernel_size, self.stride, self.dilation, name="padding")
        self.padding = padding
        has_bias = _check_bool("bias", bias)
        self.dtype = _layer_dtype(dtype)
        if not isinstance(strategy, str) or strategy not in accepted_names():
            raise ValueError(f"strategy must be one of {accepted_names()!r}; got {strategy!r}")
        self.strategy = strategy
        kh, kw = self.kernel_size
        if transposed:
            shape = (self.in_channels, self.out_channels // self.groups, kh, kw)
        else:
            shape = (self.out_channels, self.in_channels // self.groups, kh, kw)
        self.weight, self.bias = _kaiming_uniform(_rng(seed), shape, self.out_channels if has_bias else None,
                                                  self.dtype)
        self.weight_grad: np.ndarray | None = None
        self.bias_grad: np.ndarray | None = None
        self.x: np.ndarray | None = None

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self.forward(x)  # type: ignore[attr-defined]

    def _store_grads(self, dw: np.ndarray, db: np.ndarray) -> None:
        self.weight_grad = dw
        self.bias_grad = db if self.bias is not None else None


class Conv2d(_ConvBase):
    """2-D convolution layer with ``torch.nn.Conv2d``'s constructor arguments, over :func:`fastconv.conv2d`.

    Parameters
    ----------
    in_channels, out_channels : int
    kernel_size, stride, dilation : int or (int, int)
    padding : int, (ph, pw), ((top, bottom), (left, right)), "valid" or "same"
        Zero padding.  "same" uses fastconv's rule, which for stride 1 is PyTorch's.
    groups : int, dividing both channel counts
    bias : bool, default True
    dtype : "float32" (default, as PyTorch) or "float64"
        The parameters' dtype.
    seed : None, int or numpy.random.Generator
        Source of the initial weights (``numpy.random.default_rng(seed)``).
    strategy : "auto" or a name in ``fastconv.STRATEGIES``

    Attributes
    ----------
    weight : ndarray, shape (out_channels, in_channels // groups, KH, KW)
        Initialised as PyTorch does: uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` with
        ``fan_in = in_channels // groups * KH * KW`` (``kaiming_uniform_(a=sqrt(5))``).
    bias : ndarray, shape (out_channels,), or None
        Uniform on the same interval.
    weight_grad, bias_grad : ndarray or None
        Gradients from the last :meth:`backward` (replaced, not accumulated).
        ``bias_grad`` stays None without a bias.

    Parameters may be updated in place or reassigned between calls; ``forward`` uses the
    current ``weight`` and ``bias``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: Any = 0,
        dilation: int | tuple[int, int] = 1,
        groups: int = 1,
        bias: bool = True,
        *,
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
        strategy: str = "auto",
    ) -> None:
        self._init_params(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, dtype, seed, strategy,
            transposed=False,
        )

    def forward(self, x: ArrayLike) -> np.ndarray:
        """``conv2d(x, weight, ..., bias=bias)``, shape (N, out_channels, OH, OW)."""
        y = conv2d(
            x, self.weight, self.stride, self.padding, self.dilation, self.groups, bias=self.bias,
            strategy=self.strategy,
        )
        self.x = x  # type: ignore[assignment]
        return y

    def backward(self, dy: ArrayLike) -> np.ndarray:
        """Store ``weight_grad`` and ``bias_grad``; return ``dx``."""
        _need_forward(self, self.x)
        dx, dw, db = conv2d_backward(
            dy, self.x, self.weight, self.stride, self.padding, self.dilation, self.groups, strategy=self.strategy
        )
        self._store_grads(dw, db)
        return dx

    def __repr__(self) -> str:
        return (
            f"Conv2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding!r}, dilation={self.dilation}, groups={self.groups}, bias={self.bias is not None}, "
            f"dtype={self.dtype.name!r})"
        )


class ConvTranspose2d(_ConvBase):
    """Transposed convolution layer with ``torch.nn.ConvTranspose2d``'s constructor arguments.

    Computed by :func:`fastconv.conv_transpose2d`.  Parameters are those of :class:`Conv2d`
    plus ``output_padding`` (int or pair, each < max(stride, dilation)), in PyTorch's order.

    Attributes
    ----------
    weight : ndarray, shape (in_channels, out_channels // groups, KH, KW)
        Uniform on ``[-1/sqrt(fan_in), 1/sqrt(fan_in)]`` with PyTorch's
        ``fan_in = out_channels // groups * KH * KW`` (``weight.shape[1] * KH * KW``).
    bias : ndarray, shape (out_channels,), or None
    weight_grad, bias_grad : ndarray or None
        Gradients from the last :meth:`backward`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: Any = 0,
        output_padding: int | tuple[int, int] = 0,
        groups: int = 1,
        bias: bool = True,
        dilation: int | tuple[int, int] = 1,
        *,
        dtype: Any = "float32",
        seed: int | np.random.Generator | None = None,
        strategy: str = "auto",
    ) -> None:
        self.output_padding = int_pair("output_padding", output_padding, 0)
        self._init_params(
            in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias, dtype, seed, strategy,
            transposed=True,
        )
        limit = tuple(max(s, d) for s, d in zip(self.stride, self.dilation, strict=True))
        if any(o >= m for o, m in zip(self.output_padding, limit, strict=True)):
            raise ValueError(
                f"output_padding must be smaller than max(stride, dilation) on each axis = {limit}; "
                f"got output_padding={output_padding!r}"
            )

    def forward(self, x: ArrayLike) -> np.ndarray:
        """``conv_transpose2d(x, weight, ..., bias=bias)``, shape (N, out_channels, OH, OW)."""
        y = conv_transpose2d(
            x, self.weight, self.stride, self.padding, self.output_padding, self.dilation, self.groups,
            bias=self.bias, strategy=self.strategy,
        )
        self.x = x  # type: ignore[assignment]
        return y

    def backward(self, dy: ArrayLike) -> np.ndarray:
        """Store ``weight_grad`` and ``bias_grad``; return ``dx``."""
        _need_forward(self, self.x)
        dx, dw, db = conv_transpose2d_backward(
            dy, self.x, self.weight, self.stride, self.padding, self.output_padding, self.dilation, self.groups,
            strategy=self.strategy,
        )
        self._store_grads(dw, db)
        return dx

    def __repr__(self) -> str:
        return (
            f"ConvTranspose2d({self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding!r}, output_padding={self.output_padding}, "
            f"groups={self.groups}, bias={self.bias is not None}, dilation={self.dilation}, "
            f"dtype={self.dtype.name!r})"
        )


def _pool_args(kernel_size: Any, stride: Any, padding: Any) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    k = int_pair("kernel_size", kernel_size, 1)
    s = k if stride is None else int_pair("stride", stride, 1)
    p = int_pair("padding", padding, 0)
    if p[0] > k[0] // 2 or p[1] > k[1] // 2:
        raise ValueError(
            f"padding must be at most half of kernel_size={k} on each axis (<= {(k[0] // 2, k[1] // 2)}); "
            f"got padding={padding!r}"
        )
    return k, s, p


class MaxPool2d:
    """Max pooling with ``torch.nn.MaxPool2d``'s constructor arguments, over :func:`fastconv.max_pool2d`.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int, (int, int) or None (default: kernel_size)
    padding : int or (int, int), at most half the window; pads with -inf
    dilation : int or (int, int)
    return_indices : bool
        If True, ``forward`` returns ``(y, indices)`` (flat ``h * W + w`` per plane).
    ceil_mode : bool

    ``backward(dy)`` returns ``dx``, using the indices of the last ``forward``.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        dilation: int | tuple[int, int] = 1,
        return_indices: bool = False,
        ceil_mode: bool = False,
    ) -> None:
        self.kernel_size, self.stride, self.padding = _pool_args(kernel_size, stride, padding)
        self.dilation = int_pair("dilation", dilation, 1)
        self.return_indices = _check_bool("return_indices", return_indices)
        self.ceil_mode = _check_bool("ceil_mode", ceil_mode)
        self.x: np.ndarray | None = None
        self.indices: np.ndarray | None = None

    def forward(self, x: ArrayLike) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """The window maxima (and, with ``return_indices``, their flat positions)."""
        y, indices = max_pool2d(
            x, self.kernel_size, self.stride, self.padding, self.dilation, ceil_mode=self.ceil_mode,
            return_indices=True,
        )
        self.x, self.indices = x, indices  # type: ignore[assignment]
        return (y, indices) if self.return_indices else y

    def __call__(self, x: ArrayLike) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        return self.forward(x)

    def backward(self, dy: ArrayLike) -> np.ndarray:
        """Return ``dx``: each ``dy`` value added at its window's maximum."""
        _need_forward(self, self.x)
        return max_pool2d_backward(
            dy, np.shape(self.x), self.kernel_size, self.stride, self.padding, self.dilation,
            ceil_mode=self.ceil_mode, indices=self.indices,
        )

    def __repr__(self) -> str:
        return (
            f"MaxPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"dilation={self.dilation}, return_indices={self.return_indices}, ceil_mode={self.ceil_mode})"
        )


class AvgPool2d:
    """Average pooling with ``torch.nn.AvgPool2d``'s constructor arguments, over :func:`fastconv.avg_pool2d`.

    Parameters
    ----------
    kernel_size : int or (int, int)
    stride : int, (int, int) or None (default: kernel_size)
    padding : int or (int, int), at most half the window; zero padding
    ceil_mode : bool
    count_include_pad : bool
        Whether padded positions count in the divisor.
    divisor_override : int or None
        If given, the divisor of every window.

    ``backward(dy)`` returns ``dx``.
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ) -> None:
        self.kernel_size, self.stride, self.padding = _pool_args(kernel_size, stride, padding)
        self.ceil_mode = _check_bool("ceil_mode", ceil_mode)
        self.count_include_pad = _check_bool("count_include_pad", count_include_pad)
        self.divisor_override = None if divisor_override is None else as_int("divisor_override", divisor_override, 1)
        self.x: np.ndarray | None = None

    def _kw(self) -> dict[str, Any]:
        return {
            "ceil_mode": self.ceil_mode,
            "count_include_pad": self.count_include_pad,
            "divisor_override": self.divisor_override,
        }

    def forward(self, x: ArrayLike) -> np.ndarray:
        """The window averages, shape (N, C, OH, OW)."""
        y = avg_pool2d(x, self.kernel_size, self.stride, self.padding, **self._kw())
        self.x = x  # type: ignore[assignment]
        return y

    def __call__(self, x: ArrayLike) -> np.ndarray:
        return self.forward(x)

    def backward(self, dy: ArrayLike) -> np.ndarray:
        """Return ``dx``: each ``dy`` value spread over its window, divided by the window's divisor."""
        _need_forward(self, self.x)
        return avg_pool2d_backward(dy, np.shape(self.x), self.kernel_size, self.stride, self.padding,
                                               **self._kw())

    def __repr__(self) -> str:
        return (
            f"AvgPool2d(kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}, "
            f"ceil_mode={self.ceil_mode}, count_include_pad={self.count_include_pad}, "
            f"divisor_override={self.divisor_override})"
        )
