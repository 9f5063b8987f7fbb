"""The textbook NumPy convolution and pooling layers: the baseline fastconv is measured against.

This re-implements, for the benchmarks, the im2col/col2im functions (``common/util.py``) and
the ``Convolution`` and ``Pooling`` layers (``common/layers.py``) of "Deep Learning from
Scratch" (Koki Saitoh, O'Reilly Japan) -- the code many NumPy CNN learners run today -- with
the same algorithm and the same costs:

* ``im2col`` allocates its 6-D buffer with ``np.zeros`` and no dtype, i.e. **float64**, copies
  one strided slice per kernel tap, then transposes and reshapes it into the
  (N*OH*OW, C*KH*KW) column matrix (a full copy).  float32 inputs are therefore computed in
  float64, exactly as in the book; the outputs are float64.
* ``col2im`` reshapes/transposes the columns and adds one strided slice per kernel tap into a
  float64 image of size (H + 2*pad + stride - 1), then crops it.
* ``Convolution.forward`` is one ``np.dot`` of the columns with the reshaped filters plus the
  bias; ``backward`` is two ``np.dot`` calls and a ``col2im``.
* ``Pooling`` (max) takes the row-wise ``argmax``/``max`` of ``im2col``'s columns and scatters
  the gradient into a zero (rows, pool_size) matrix before ``col2im``.  Its padding is zeros
  (not -inf as in PyTorch), so with ``pad > 0`` and negative inputs it can differ from
  PyTorch; only its speed is used.

Extensions beyond the book, so that every layer of the suite has a baseline (marked
"extension" below): a ``dilation`` argument in im2col/col2im (tap ``k`` reads offset
``k*dilation``), ``groups`` in ``Convolution`` (one im2col of all channels, then one
``np.dot`` per group on that group's column slice) and an ``AvgPooling`` layer (row-wise mean;
backward spreads ``dout / pool_size`` over the window).  With ``dilation=1, groups=1`` the code
path is the book's.

This module imports only NumPy (never fastconv), so it is also an independent cross-check.
"""

from __future__ import annotations

import numpy as np


def _out_len(length: int, k: int, stride: int, pad: int, dilation: int) -> int:
    return (length + 2 * pad - dilation * (k - 1) - 1) // stride + 1


def im2col(input_data, filter_h, filter_w, stride=1, pad=0, dilation=1):
    """(N, C, H, W) -> (N*OH*OW, C*FH*FW) column matrix (float64, as the book's ``np.zeros`` gives)."""
    n, c, h, w = input_data.shape
    out_h = _out_len(h, filter_h, stride, pad, dilation)
    out_w = _out_len(w, filter_w, stride, pad, dilation)
    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((n, c, filter_h, filter_w, out_h, out_w))  # float64, as in the book
    for ky in range(filter_h):
        y0 = ky * dilation  # extension: dilation (the book has y0 = ky)
        y_max = y0 + stride * out_h
        for kx in range(filter_w):
            x0 = kx * dilation
            x_max = x0 + stride * out_w
            col[:, :, ky, kx, :, :] = img[:, :, y0:y_max:stride, x0:x_max:stride]
    return col.transpose(0, 4, 5, 1, 2, 3).reshape(n * out_h * out_w, -1)


def col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0, dilation=1):
    """Adjoint of :func:`im2col`: add every column entry back onto its pixel (float64 result)."""
    n, c, h, w = input_shape
    out_h = _out_len(h, filter_h, stride, pad, dilation)
    out_w = _out_len(w, filter_w, stride, pad, dilation)
    col = col.reshape(n, out_h, out_w, c, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)
    img = np.zeros((n, c, h + 2 * pad + stride - 1, w + 2 * pad + stride - 1))
    for ky in range(filter_h):
        y0 = ky * dilation
        y_max = y0 + stride * out_h
        for kx in range(filter_w):
            x0 = kx * dilation
            x_max = x0 + stride * out_w
            img[:, :, y0:y_max:stride, x0:x_max:stride] += col[:, :, ky, kx, :, :]
    return img[:, :, pad:h + pad, pad:w + pad]


class Convolution:
    """The book's convolution layer: ``forward(x)``, ``backward(dout)``, gradients in ``dW``, ``db``."""

    def __init__(self, W, b, stride=1, pad=0, dilation=1, groups=1):
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        self.dilation = dilation  # extension
        self.groups = groups  # extension
        self.x = None
        self.col = None
        self.col_W = None
        self.dW = None
        self.db = None

    def forward(self, x):
        fn, cg, fh, fw = self.W.shape
        n, c, h, w = x.shape
        out_h = _out_len(h, fh, self.stride, self.pad, self.dilation)
        out_w = _out_len(w, fw, self.stride, self.pad, self.dilation)
        col = im2col(x, fh, fw, self.stride, self.pad, self.dilation)
        g = self.groups
        if g == 1:
            col_W = self.W.reshape(fn, -1).T
            out = np.dot(col, col_W) + self.b
        else:  # extension: one np.dot per group on that group's column slice
            kg, mg = cg * fh * fw, fn // g
            col_W = [self.W[i * mg:(i + 1) * mg].reshape(mg, -1).T for i in range(g)]
            out = np.empty((col.shape[0], fn))
            for i in range(g):
                out[:, i * mg:(i + 1) * mg] = np.dot(col[:, i * kg:(i + 1) * kg], col_W[i])
            out += self.b
        out = out.reshape(n, out_h, out_w, -1).transpose(0, 3, 1, 2)
        self.x = x
        self.col = col
        self.col_W = col_W
        return out

    def backward(self, dout):
        fn, cg, fh, fw = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, fn)
        self.db = np.sum(dout, axis=0)
        g = self.groups
        if g == 1:
            self.dW = np.dot(self.col.T, dout)
            self.dW = self.dW.transpose(1, 0).reshape(fn, cg, fh, fw)
            dcol = np.dot(dout, self.col_W.T)
        else:  # extension
            kg, mg = cg * fh * fw, fn // g
            self.dW = np.empty((fn, cg, fh, fw))
            dcol = np.empty_like(self.col)
            for i in range(g):
                dout_i = dout[:, i * mg:(i + 1) * mg]
                self.dW[i * mg:(i + 1) * mg] = np.dot(self.col[:, i * kg:(i + 1) * kg].T, dout_i).T.reshape(
                    mg, cg, fh, fw
                )
                dcol[:, i * kg:(i + 1) * kg] = np.dot(dout_i, self.col_W[i].T)
        return col2im(dcol, self.x.shape, fh, fw, self.stride, self.pad, self.dilation)


class Pooling:
    """The book's max-pooling layer (zero padding; ``argmax`` keeps the first maximum)."""

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x = None
        self.arg_max = None

    def forward(self, x):
        n, c, h, w = x.shape
        out_h = _out_len(h, self.pool_h, self.stride, self.pad, 1)
        out_w = _out_len(w, self.pool_w, self.stride, self.pad, 1)
        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)
        arg_max = np.argmax(col, axis=1)
        out = np.max(col, axis=1)
        out = out.reshape(n, out_h, out_w, c).transpose(0, 3, 1, 2)
        self.x = x
        self.arg_max = arg_max
        return out

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)
        pool_size = self.pool_h * self.pool_w
        dmax = np.zeros((dout.size, pool_size))
        dmax[np.arange(self.arg_max.size), self.arg_max.flatten()] = dout.flatten()
        dmax = dmax.reshape(dout.shape + (pool_size,))
        dcol = dmax.reshape(dmax.shape[0] * dmax.shape[1] * dmax.shape[2], -1)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)


class AvgPooling:
    """Extension: average pooling in the book's style (zero padding counted, like count_include_pad=True)."""

    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad
        self.x = None

    def forward(self, x):
        n, c, h, w = x.shape
        out_h = _out_len(h, self.pool_h, self.stride, self.pad, 1)
        out_w = _out_len(w, self.pool_w, self.stride, self.pad, 1)
        col = im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)
        out = np.mean(col, axis=1)
        out = out.reshape(n, out_h, out_w, c).transpose(0, 3, 1, 2)
        self.x = x
        return out

    def backward(self, dout):
        dout = dout.transpose(0, 2, 3, 1)
        pool_size = self.pool_h * self.pool_w
        davg = np.repeat(dout.reshape(-1, 1) / pool_size, pool_size, axis=1)
        dcol = davg.reshape(dout.shape[0] * dout.shape[1] * dout.shape[2], -1)
        return col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)
