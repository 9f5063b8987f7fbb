"""fastconv.layers: the textbook interface against a copy of the textbook's layers, the PyTorch-style layers
against the slow reference (and torch.nn, when torch is importable), and fastconv.warmup."""

from __future__ import annotations

import math

import numpy as np
import pytest
import reference as ref

import fastconv
from fastconv import layers

# --------------------------------------------------------------------------- the textbook's code
# A faithful copy of "Deep Learning from Scratch" common/util.py (im2col, col2im) and the Convolution, Pooling,
# Relu, Affine and SoftmaxWithLoss classes of common/layers.py (oreilly-japan/deep-learning-from-scratch),
# comments translated.  These are what fastconv.layers.Convolution / Pooling must reproduce.


def tb_im2col(input_data, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_data.shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1

    img = np.pad(input_data, [(0, 0), (0, 0), (pad, pad), (pad, pad)], "constant")
    col = np.zeros((N, C, filter_h, filter_w, out_h, out_w))

    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            col[:, :, y, x, :, :] = img[:, :, y:y_max:stride, x:x_max:stride]

    col = col.transpose(0, 4, 5, 1, 2, 3).reshape(N * out_h * out_w, -1)
    return col


def tb_col2im(col, input_shape, filter_h, filter_w, stride=1, pad=0):
    N, C, H, W = input_shape
    out_h = (H + 2 * pad - filter_h) // stride + 1
    out_w = (W + 2 * pad - filter_w) // stride + 1
    col = col.reshape(N, out_h, out_w, C, filter_h, filter_w).transpose(0, 3, 4, 5, 1, 2)

    img = np.zeros((N, C, H + 2 * pad + stride - 1, W + 2 * pad + stride - 1))
    for y in range(filter_h):
        y_max = y + stride * out_h
        for x in range(filter_w):
            x_max = x + stride * out_w
            img[:, :, y:y_max:stride, x:x_max:stride] += col[:, :, y, x, :, :]

    return img[:, :, pad:H + pad, pad:W + pad]


class TbConvolution:
    def __init__(self, W, b, stride=1, pad=0):
        self.W = W
        self.b = b
        self.stride = stride
        self.pad = pad
        # intermediate data (used in backward)
        self.x = None
        self.col = None
        self.col_W = None
        # gradients of the weight and bias parameters
        self.dW = None
        self.db = None

    def forward(self, x):
        FN, C, FH, FW = self.W.shape
        N, C, H, W = x.shape
        out_h = 1 + int((H + 2 * self.pad - FH) / self.stride)
        out_w = 1 + int((W + 2 * self.pad - FW) / self.stride)

        col = tb_im2col(x, FH, FW, self.stride, self.pad)
        col_W = self.W.reshape(FN, -1).T

        out = np.dot(col, col_W) + self.b
        out = out.reshape(N, out_h, out_w, -1).transpose(0, 3, 1, 2)

        self.x = x
        self.col = col
        self.col_W = col_W

        return out

    def backward(self, dout):
        FN, C, FH, FW = self.W.shape
        dout = dout.transpose(0, 2, 3, 1).reshape(-1, FN)

        self.db = np.sum(dout, axis=0)
        self.dW = np.dot(self.col.T, dout)
        self.dW = self.dW.transpose(1, 0).reshape(FN, C, FH, FW)

        dcol = np.dot(dout, self.col_W.T)
        dx = tb_col2im(dcol, self.x.shape, FH, FW, self.stride, self.pad)

        return dx


class TbPooling:
    def __init__(self, pool_h, pool_w, stride=1, pad=0):
        self.pool_h = pool_h
        self.pool_w = pool_w
        self.stride = stride
        self.pad = pad

        self.x = None
        self.arg_max = None

    def forward(self, x):
        N, C, H, W = x.shape
        out_h = int(1 + (H - self.pool_h) / self.stride)
        out_w = int(1 + (W - self.pool_w) / self.stride)

        col = tb_im2col(x, self.pool_h, self.pool_w, self.stride, self.pad)
        col = col.reshape(-1, self.pool_h * self.pool_w)

        arg_max = np.argmax(col, axis=1)
        out = np.max(col, axis=1)
        out = out.reshape(N, out_h, out_w, C).transpose(0, 3, 1, 2)

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
        dx = tb_col2im(dcol, self.x.shape, self.pool_h, self.pool_w, self.stride, self.pad)

        return dx


class TbRelu:
    def __init__(self):
        self.mask = None

    def forward(self, x):
        self.mask = x <= 0
        out = x.copy()
        out[self.mask] = 0
        return out

    def backward(self, dout):
        dout[self.mask] = 0
        dx = dout
        return dx


class TbAffine:
    def __init__(self, W, b):
        self.W = W
        self.b = b
        self.x = None
        self.original_x_shape = None
        self.dW = None
        self.db = None

    def forward(self, x):
        self.original_x_shape = x.shape
        x = x.reshape(x.shape[0], -1)
        self.x = x
        out = np.dot(self.x, self.W) + self.b
        return out

    def backward(self, dout):
        dx = np.dot(dout, self.W.T)
        self.dW = np.dot(self.x.T, dout)
        self.db = np.sum(dout, axis=0)
        dx = dx.reshape(*self.original_x_shape)
        return dx


def tb_softmax(x):
    x = x - np.max(x, axis=-1, keepdims=True)
    return np.exp(x) / np.sum(np.exp(x), axis=-1, keepdims=True)


def tb_cross_entropy_error(y, t):
    if y.ndim == 1:
        t = t.reshape(1, t.size)
        y = y.reshape(1, y.size)
    if t.size == y.size:
        t = t.argmax(axis=1)
    batch_size = y.shape[0]
    return -np.sum(np.log(y[np.arange(batch_size), t] + 1e-7)) / batch_size


class TbSoftmaxWithLoss:
    def __init__(self):
        self.loss = None
        self.y = None
        self.t = None

    def forward(self, x, t):
        self.t = t
        self.y = tb_softmax(x)
        self.loss = tb_cross_entropy_error(self.y, self.t)
        return self.loss

    def backward(self, dout=1):
        batch_size = self.t.shape[0]
        if self.t.size == self.y.size:
            dx = (self.y - self.t) / batch_size
        else:
            dx = self.y.copy()
            dx[np.arange(batch_size), self.t] -= 1
            dx = dx / batch_size
        return dx


class SimpleConvNet:
    """The textbook's SimpleConvNet (ch07/simple_convnet.py), small, with the conv and pool classes injectable."""

    def __init__(self, Convolution, Pooling, input_dim=(1, 10, 10), filter_num=4, filter_size=3, pad=1, stride=1,
                 hidden_size=8, output_size=5, weight_init_std=0.1, seed=0):
        rng = np.random.RandomState(seed)
        input_size = input_dim[1]
        conv_output_size = (input_size - filter_size + 2 * pad) / stride + 1
        pool_output_size = int(filter_num * (conv_output_size / 2) * (conv_output_size / 2))
        self.params = {
            "W1": weight_init_std * rng.randn(filter_num, input_dim[0], filter_size, filter_size),
            "b1": np.zeros(filter_num),
            "W2": weight_init_std * rng.randn(pool_output_size, hidden_size),
            "b2": np.zeros(hidden_size),
            "W3": weight_init_std * rng.randn(hidden_size, output_size),
            "b3": np.zeros(output_size),
        }
        self.layers = {
            "Conv1": Convolution(self.params["W1"], self.params["b1"], stride, pad),
            "Relu1": TbRelu(),
            "Pool1": Pooling(pool_h=2, pool_w=2, stride=2),
            "Affine1": TbAffine(self.params["W2"], self.params["b2"]),
            "Relu2": TbRelu(),
            "Affine2": TbAffine(self.params["W3"], self.params["b3"]),
        }
        self.last_layer = TbSoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)
        return x

    def loss(self, x, t):
        return self.last_layer.forward(self.predict(x), t)

    def gradient(self, x, t):
        self.loss(x, t)
        dout = self.last_layer.backward(1)
        for layer in reversed(list(self.layers.values())):
            dout = layer.backward(dout)
        grads = {}
        grads["W1"], grads["b1"] = self.layers["Conv1"].dW, self.layers["Conv1"].db
        grads["W2"], grads["b2"] = self.layers["Affine1"].dW, self.layers["Affine1"].db
        grads["W3"], grads["b3"] = self.layers["Affine2"].dW, self.layers["Affine2"].db
        return grads


# --------------------------------------------------------------------------- textbook interface


def _rand(rng, *shape):
    return rng.standard_normal(shape)


@pytest.mark.parametrize(
    "x_shape, w_shape, stride, pad",
    [
        ((2, 3, 7, 6), (4, 3, 3, 3), 1, 0),
        ((2, 3, 7, 6), (4, 3, 3, 3), 1, 1),
        ((1, 2, 9, 8), (3, 2, 3, 2), 2, 1),
        ((3, 1, 5, 5), (2, 1, 5, 5), 1, 2),
        ((2, 2, 6, 6), (5, 2, 1, 1), 3, 0),
    ],
)
def test_convolution_matches_textbook(x_shape, w_shape, stride, pad):
    rng = np.random.default_rng(1)
    x, W, b = _rand(rng, *x_shape), _rand(rng, *w_shape), _rand(rng, w_shape[0])
    ours, theirs = layers.Convolution(W, b, stride, pad), TbConvolution(W, b, stride, pad)
    y, y_tb = ours.forward(x), theirs.forward(x)
    assert y.dtype == np.float64 and y.shape == y_tb.shape
    # Equal up to rounding: the textbook sums through BLAS GEMM, fastconv in its own order (float64, ~1e-15).
    np.testing.assert_allclose(y, y_tb, rtol=1e-12, atol=1e-12)
    dout = _rand(rng, *y.shape)
    dx, dx_tb = ours.backward(dout), theirs.backward(dout.copy())
    np.testing.assert_allclose(dx, dx_tb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.dW, theirs.dW, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.db, theirs.db, rtol=1e-12, atol=1e-12)
    assert ours.dW.shape == W.shape and ours.db.shape == b.shape


def test_convolution_float32_input_with_float64_weights_computes_in_float64():
    # The textbook's usual case: MNIST images as float32, weights from np.random.randn (float64).
    rng = np.random.default_rng(2)
    x = _rand(rng, 2, 1, 6, 6).astype(np.float32)
    W, b = _rand(rng, 3, 1, 3, 3), np.zeros(3)
    y, y_tb = layers.Convolution(W, b, 1, 1).forward(x), TbConvolution(W, b, 1, 1).forward(x)
    assert y.dtype == np.float64
    np.testing.assert_allclose(y, y_tb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "x_shape, pool, stride",
    [((2, 3, 8, 8), (2, 2), 2), ((2, 3, 7, 6), (3, 2), 1), ((1, 2, 9, 9), (3, 3), 2), ((2, 1, 4, 6), (4, 3), 3)],
)
def test_pooling_matches_textbook_without_padding(x_shape, pool, stride):
    rng = np.random.default_rng(3)
    x = _rand(rng, *x_shape)
    ours, theirs = layers.Pooling(*pool, stride=stride), TbPooling(*pool, stride=stride)
    y, y_tb = ours.forward(x), theirs.forward(x)
    np.testing.assert_array_equal(y, y_tb)  # a maximum is exact
    dout = _rand(rng, *y.shape)
    # Overlapping windows (stride < pool) add several dout values to one pixel, possibly in another order.
    np.testing.assert_allclose(ours.backward(dout), theirs.backward(dout), rtol=1e-14, atol=1e-15)


def test_pooling_ties_pick_the_same_element_as_the_textbook():
    # Small integers make many ties; both take the first maximum in row-major window order.
    rng = np.random.default_rng(4)
    x = rng.integers(0, 3, size=(2, 2, 6, 6)).astype(np.float64)
    ours, theirs = layers.Pooling(2, 2, stride=1), TbPooling(2, 2, stride=1)
    np.testing.assert_array_equal(ours.forward(x), theirs.forward(x))
    dout = rng.integers(1, 5, size=(2, 2, 5, 5)).astype(np.float64)  # integers: sums exact in any order
    np.testing.assert_array_equal(ours.backward(dout), theirs.backward(dout))


def test_pooling_pads_with_minus_infinity_where_the_textbook_pads_zeros():
    # One window of all-negative values covering padding: the textbook (zero padding) reports 0.
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    y = layers.Pooling(2, 2, stride=5, pad=1).forward(x)  # the output size also works in the textbook here
    y_tb = TbPooling(2, 2, stride=5, pad=1).forward(x)
    assert y_tb[0, 0, 0, 0] == 0.0
    assert y[0, 0, 0, 0] == -1.0  # the true maximum of the window's one real pixel
    np.testing.assert_array_equal(y, ref.max_pool2d(x, 2, 5, 1))


def test_simple_convnet_switches_by_one_import():
    rng = np.random.default_rng(5)
    x, t = rng.random((6, 1, 10, 10)), rng.integers(0, 5, size=6)
    nets = [SimpleConvNet(TbConvolution, TbPooling), SimpleConvNet(layers.Convolution, layers.Pooling)]
    losses = [net.loss(x, t) for net in nets]
    assert losses[1] == pytest.approx(losses[0], rel=1e-12)
    grads = [net.gradient(x, t) for net in nets]
    for key in grads[0]:
        np.testing.assert_allclose(grads[1][key], grads[0][key], rtol=1e-10, atol=1e-13, err_msg=key)
    # An SGD step in place on the shared parameter dict moves both nets the same way.
    for net, g in zip(nets, grads, strict=True):
        for key in net.params:
            net.params[key] -= 0.1 * g[key]
    assert nets[1].loss(x, t) == pytest.approx(nets[0].loss(x, t), rel=1e-12)


def test_convolution_attributes():
    rng = np.random.default_rng(6)
    x, W, b = _rand(rng, 1, 2, 5, 5), _rand(rng, 3, 2, 3, 3), _rand(rng, 3)
    conv = layers.Convolution(W, b, stride=1, pad=1)
    assert conv.W is W and conv.b is b and conv.dW is None and conv.db is None
    with pytest.raises(RuntimeError, match="before forward"):
        conv.backward(np.ones((1, 3, 5, 5)))
    y = conv.forward(x)
    conv.backward(np.ones_like(y))
    assert conv.dW.shape == W.shape and conv.db.shape == (3,)
    np.testing.assert_allclose(conv.db, np.full(3, 25.0))
    W *= 2.0  # in place, as the textbook's optimizers update params
    np.testing.assert_allclose(conv.forward(x) - b[None, :, None, None], 2 * (y - b[None, :, None, None]),
                               rtol=1e-12, atol=1e-12)
    conv.W, conv.b = np.zeros_like(W), np.ones(3)  # reassigned, as SimpleConvNet.load_params does
    np.testing.assert_array_equal(conv.forward(x), np.ones((1, 3, 5, 5)))


def test_pooling_attributes():
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    pool = layers.Pooling(2, 2, stride=2)
    with pytest.raises(RuntimeError, match="before forward"):
        pool.backward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(pool.forward(x), [[[[5, 7], [13, 15]]]])
    np.testing.assert_array_equal(pool.indices, [[[[5, 7], [13, 15]]]])
    dx = pool.backward(np.ones((1, 1, 2, 2)))
    np.testing.assert_array_equal(dx.ravel(), np.isin(np.arange(16), [5, 7, 13, 15]).astype(float))
    assert layers.Pooling(2, 2).forward(x).shape == (1, 1, 3, 3)  # default stride 1, as the textbook


# --------------------------------------------------------------------------- PyTorch-style layers


CONV_CASES = [
    dict(in_channels=3, out_channels=4, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(3, 2), stride=2, padding=1, dilation=(1, 2), groups=2),
    dict(in_channels=2, out_channels=3, kernel_size=3, padding="same", bias=False),
]

CONVT_CASES = [
    dict(in_channels=3, out_channels=2, kernel_size=3),
    dict(in_channels=4, out_channels=6, kernel_size=(2, 3), stride=2, padding=(0, 1), output_padding=1, groups=2),
    dict(in_channels=2, out_channels=2, kernel_size=3, stride=(1, 2), dilation=2, bias=False),
]


@pytest.mark.parametrize("kwargs", CONV_CASES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_conv2d_layer_matches_reference(kwargs, dtype):
    layer = layers.Conv2d(**kwargs, dtype=dtype, seed=7)
    rng = np.random.default_rng(8)
    x = rng.standard_normal((2, kwargs["in_channels"], 7, 8)).astype(dtype)
    args = (layer.stride, layer.padding, layer.dilation, layer.groups)
    y = layer(x)
    assert y.dtype == dtype
    tol = 1e-5 if dtype == "float32" else 1e-12  # float32: single-precision rounding of sums of ~30 terms
    np.testing.assert_allclose(y, ref.conv2d(x, layer.weight, *args, bias=layer.bias), rtol=tol, atol=tol)
    dy = rng.standard_normal(y.shape).astype(dtype)
    dx = layer.backward(dy)
    dx_r, dw_r, db_r = ref.conv2d_backward(dy, x, layer.weight, *args)
    np.testing.assert_allclose(dx, dx_r, rtol=tol, atol=tol)
    np.testing.assert_allclose(layer.weight_grad, dw_r, rtol=tol, atol=tol)
    if layer.bias is None:
        assert layer.bias_grad is None
    else:
        np.testing.assert_allclose(layer.bias_grad, db_r, rtol=tol, atol=tol)


@pytest.mark.parametrize("kwargs", CONVT_CASES)
def test_conv_transpose2d_layer_matches_reference(kwargs):
    layer = layers.ConvTranspose2d(**kwargs, dtype="float64", seed=9)
    rng = np.random.default_rng(10)
    x = rng.standard_normal((2, kwargs["in_channels"], 5, 4))
    args = (layer.stride, layer.padding, layer.output_padding, layer.dilation, layer.groups)
    y = layer(x)
    np.testing.assert_allclose(y, ref.conv_transpose2d(x, layer.weight, *args, bias=layer.bias), rtol=1e-12,
                               atol=1e-12)
    dy = rng.standard_normal(y.shape)
    dx = layer.backward(dy)
    dx_r, dw_r, db_r = ref.conv_transpose2d_backward(dy, x, layer.weight, *args)
    np.testing.assert_allclose(dx, dx_r, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(layer.weight_grad, dw_r, rtol=1e-12, atol=1e-12)
    if layer.bias is None:
        assert layer.bias_grad is None
    else:
        np.testing.assert_allclose(layer.bias_grad, db_r, rtol=1e-12, atol=1e-12)


def test_conv_layers_agree_with_functional_api():
    rng = np.random.default_rng(11)
    conv = layers.Conv2d(2, 4, 3, stride=2, padding=1, dtype="float64", seed=1)
    x = rng.standard_normal((2, 2, 6, 6))
    np.testing.assert_array_equal(conv(x), fastconv.conv2d(x, conv.weight, 2, 1, bias=conv.bias))
    dy = rng.standard_normal((2, 4, 3, 3))
    dx, dw, db = fastconv.conv2d_backward(dy, x, conv.weight, 2, 1)
    np.testing.assert_array_equal(conv.backward(dy), dx)
    np.testing.assert_array_equal(conv.weight_grad, dw)
    np.testing.assert_array_equal(conv.bias_grad, db)
    convt = layers.ConvTranspose2d(4, 2, 3, stride=2, padding=1, output_padding=1, dtype="float64", seed=1)
    y = convt(dy)
    np.testing.assert_array_equal(y, fastconv.conv_transpose2d(dy, convt.weight, 2, 1, 1, bias=convt.bias))
    dx, dw, db = fastconv.conv_transpose2d_backward(x, dy, convt.weight, 2, 1, 1)
    np.testing.assert_array_equal(convt.backward(x), dx)
    np.testing.assert_array_equal(convt.weight_grad, dw)
    np.testing.assert_array_equal(convt.bias_grad, db)


def test_conv_layer_initialisation():
    conv = layers.Conv2d(6, 8, (3, 2), groups=2, seed=0)
    assert conv.weight.shape == (8, 3, 3, 2) and conv.bias.shape == (8,)
    assert conv.weight.dtype == np.float32 and conv.bias.dtype == np.float32
    bound = 1 / math.sqrt(3 * 3 * 2)  # PyTorch: fan_in = in_channels // groups * KH * KW
    assert np.abs(conv.weight).max() <= bound and np.abs(conv.bias).max() <= bound
    assert np.abs(conv.weight).max() > 0.8 * bound  # uniform over the whole interval, not a narrower one
    convt = layers.ConvTranspose2d(6, 8, 3, groups=2, dtype="float64", seed=0)
    assert convt.weight.shape == (6, 4, 3, 3) and convt.weight.dtype == np.float64
    bound_t = 1 / math.sqrt(4 * 3 * 3)  # PyTorch: fan_in = weight.shape[1] * KH * KW = out_channels // groups * ...
    assert bound_t * 0.8 < np.abs(convt.weight).max() <= bound_t and np.abs(convt.bias).max() <= bound_t
    # Seeds and Generators reproduce; different seeds differ.
    np.testing.assert_array_equal(layers.Conv2d(6, 8, 3, seed=3).weight, layers.Conv2d(6, 8, 3, seed=3).weight)
    g1, g2 = np.random.default_rng(4), np.random.default_rng(4)
    np.testing.assert_array_equal(layers.Conv2d(2, 2, 3, seed=g1).weight, layers.Conv2d(2, 2, 3, seed=g2).weight)
    assert not np.array_equal(layers.Conv2d(6, 8, 3, seed=3).weight, layers.Conv2d(6, 8, 3, seed=5).weight)
    assert layers.Conv2d(2, 2, 3, bias=False).bias is None


@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: layers.Conv2d(0, 2, 3), ValueError, "in_channels"),
        (lambda: layers.Conv2d(2, 2.0, 3), TypeError, "out_channels"),
        (lambda: layers.Conv2d(3, 2, 3, groups=2), ValueError, "groups"),
        (lambda: layers.Conv2d(2, 2, (3, 0)), ValueError, "kernel_size"),
        (lambda: layers.Conv2d(2, 2, 3, padding="full"), ValueError, "padding"),
        (lambda: layers.Conv2d(2, 2, 3, bias=1), TypeError, "bias"),
        (lambda: layers.Conv2d(2, 2, 3, dtype="float16"), ValueError, "dtype"),
        (lambda: layers.Conv2d(2, 2, 3, dtype=None), ValueError, "dtype"),
        (lambda: layers.Conv2d(2, 2, 3, seed=1.5), TypeError, "seed"),
        (lambda: layers.Conv2d(2, 2, 3, strategy="fast"), ValueError, "strategy"),
        (lambda: layers.ConvTranspose2d(2, 2, 3, stride=2, output_padding=2), ValueError, "output_padding"),
        (lambda: layers.MaxPool2d(3, padding=2), ValueError, "padding"),
        (lambda: layers.MaxPool2d(2, ceil_mode=None), TypeError, "ceil_mode"),
        (lambda: layers.AvgPool2d(2, divisor_override=0), ValueError, "divisor_override"),
    ],
)
def test_layer_constructor_validation(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_pytorch_style_backward_before_forward():
    for layer in (layers.Conv2d(1, 1, 1), layers.ConvTranspose2d(1, 1, 1), layers.MaxPool2d(2), layers.AvgPool2d(2)):
        with pytest.raises(RuntimeError, match="before forward"):
            layer.backward(np.ones((1, 1, 1, 1)))


@pytest.mark.parametrize(
    "kwargs", [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, dilation=(1, 2), ceil_mode=True)]
)
def test_max_pool_layer_matches_reference(kwargs):
    rng = np.random.default_rng(12)
    x = rng.standard_normal((2, 3, 7, 8))
    layer = layers.MaxPool2d(**kwargs, return_indices=True)
    args = (layer.kernel_size, layer.stride, layer.padding, layer.dilation)
    y, idx = layer(x)
    y_r, idx_r = ref.max_pool2d(x, *args, ceil_mode=layer.ceil_mode, return_indices=True)
    np.testing.assert_array_equal(y, y_r)
    np.testing.assert_array_equal(idx, idx_r)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dy), ref.max_pool2d_backward(dy, x, *args, ceil_mode=layer.ceil_mode),
                               rtol=1e-14, atol=1e-15)
    plain = layers.MaxPool2d(**kwargs)
    np.testing.assert_array_equal(plain(x), y)  # without return_indices: just y
    np.testing.assert_array_equal(plain.backward(dy), layer.backward(dy))


@pytest.mark.parametrize(
    "kwargs",
    [dict(kernel_size=2), dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
     dict(kernel_size=(3, 2), stride=1, padding=(1, 0), divisor_override=4)],
)
def test_avg_pool_layer_matches_reference(kwargs):
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3, 7, 8))
    layer = layers.AvgPool2d(**kwargs)
    args = (layer.kernel_size, layer.stride, layer.padding)
    kw = dict(ceil_mode=layer.ceil_mode, count_include_pad=layer.count_include_pad,
              divisor_override=layer.divisor_override)
    y = layer(x)
    np.testing.assert_allclose(y, ref.avg_pool2d(x, *args, **kw), rtol=1e-13, atol=1e-14)
    dy = rng.standard_normal(y.shape)
    np.testing.assert_allclose(layer.backward(dy), ref.avg_pool2d_backward(dy, x, *args, **kw), rtol=1e-13,
                               atol=1e-14)
    np.testing.assert_array_equal(y, fastconv.avg_pool2d(x, *args, **kw))


# --------------------------------------------------------------------------- against torch.nn (optional)


def _torch():
    return pytest.importorskip("torch")


def _torch_grads(module, x, dy):
    torch = _torch()
    xt = torch.tensor(x, requires_grad=True)
    out = module(xt)
    if isinstance(out, tuple):
        out = out[0]
    out.backward(torch.tensor(dy))
    return out.detach().numpy(), xt.grad.numpy()


@pytest.mark.parametrize("transposed", [False, True])
def test_conv_layers_match_torch(transposed):
    torch = _torch()
    if transposed:
        kw = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, output_padding=1, groups=2,
                  dilation=1)
        ours, cls = layers.ConvTranspose2d(**kw, dtype="float64", seed=0), torch.nn.ConvTranspose2d
    else:
        kw = dict(in_channels=4, out_channels=6, kernel_size=3, stride=2, padding=1, dilation=2, groups=2)
        ours, cls = layers.Conv2d(**kw, dtype="float64", seed=0), torch.nn.Conv2d
    theirs = cls(**kw, dtype=torch.float64)
    assert tuple(theirs.weight.shape) == ours.weight.shape
    with torch.no_grad():
        theirs.weight.copy_(torch.tensor(ours.weight))
        theirs.bias.copy_(torch.tensor(ours.bias))
    rng = np.random.default_rng(14)
    x = rng.standard_normal((2, 4, 6, 7))
    y = ours(x)
    dy = rng.standard_normal(y.shape)
    y_t, dx_t = _torch_grads(theirs, x, dy)
    np.testing.assert_allclose(y, y_t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.backward(dy), dx_t, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.weight_grad, theirs.weight.grad.numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ours.bias_grad, theirs.bias.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_conv_layer_initial_range_matches_torch():
    torch = _torch()
    torch.manual_seed(0)
    for ours, theirs in [
        (layers.Conv2d(6, 8, 3, groups=2, seed=0), torch.nn.Conv2d(6, 8, 3, groups=2)),
        (layers.ConvTranspose2d(6, 8, 3, groups=2, seed=0), torch.nn.ConvTranspose2d(6, 8, 3, groups=2)),
    ]:
        # Same uniform interval U(-bound, bound): with 216 weights the largest |w| of each lies in (0.8, 1] * bound
        # (a different fan_in rule, e.g. in_channels // groups for the transposed layer, would break one side).
        bound = 1 / math.sqrt(ours.weight[0].size)
        for w in (ours.weight, theirs.weight.detach().numpy()):
            assert 0.8 * bound < np.abs(w).max() <= bound
        for b in (ours.bias, theirs.bias.detach().numpy()):
            assert np.abs(b).max() <= bound


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool_layers_match_torch(kind):
    torch = _torch()
    if kind == "max":
        kw = dict(kernel_size=3, stride=2, padding=1, dilation=1, ceil_mode=True)
        ours, theirs = layers.MaxPool2d(**kw, return_indices=True), torch.nn.MaxPool2d(**kw, return_indices=True)
    else:
        kw = dict(kernel_size=3, stride=2, padding=1, ceil_mode=True, count_include_pad=False)
        ours, theirs = layers.AvgPool2d(**kw), torch.nn.AvgPool2d(**kw)
    rng = np.random.default_rng(15)
    x = rng.standard_normal((2, 3, 7, 8))
    out = ours(x)
    y = out[0] if kind == "max" else out
    if kind == "max":
        np.testing.assert_array_equal(out[1], theirs(torch.tensor(x))[1].numpy())
    dy = rng.standard_normal(y.shape)
    y_t, dx_t = _torch_grads(theirs, x, dy)
    np.testing.assert_allclose(y, y_t, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(ours.backward(dy), dx_t, rtol=1e-14, atol=1e-15)


# --------------------------------------------------------------------------- fastconv.warmup


def _numba_kernels():
    """{qualified name: dispatcher} of every numba kernel in fastconv, and the names of those other kernels call."""
    import sys

    from numba.core.registry import CPUDispatcher

    kernels = {}
    for modname, mod in list(sys.modules.items()):
        if modname == "fastconv" or modname.startswith("fastconv."):
            for name, obj in vars(mod).items():
                obj = getattr(obj, "dispatcher", obj)  # parallel kernels sit behind a launch guard (_options.py)
                if isinstance(obj, CPUDispatcher) and obj.py_func.__module__ == modname:
                    kernels[f"{modname}.{name}"] = obj
    called = set()
    for disp in kernels.values():
        func = disp.py_func
        for name in func.__code__.co_names:
            obj = func.__globals__.get(name)
            if isinstance(obj, CPUDispatcher):
                called.add(f"{obj.py_func.__module__}.{name}")
    return kernels, called


def test_warmup_compiles_every_kernel_for_each_dtype(monkeypatch):
    """warmup() calls every kernel Python calls with float32 and float64 arrays.

    Kernels called only from other kernels are compiled into their callers (and, when the callers come from the
    on-disk cache, never compiled themselves), so only the kernels Python calls are checked.  The calls are
    recorded (each such kernel replaced, in its module, by a recording wrapper) rather than read from the
    dispatchers' compiled signatures, which earlier tests in the same process may have filled.
    """
    import sys

    kernels, called = _numba_kernels()
    assert kernels
    seen: dict[str, set[str]] = {}

    def recording(name, kern):
        def call(*args, **kw):
            seen.setdefault(name, set()).update(
                a.dtype.name for a in args if isinstance(a, np.ndarray) and a.dtype.kind == "f")
            return kern(*args, **kw)
        return call

    mods = [mod for modname, mod in list(sys.modules.items()) if modname.split(".")[0] == "fastconv"]
    for name in kernels:
        if name not in called:
            modname, attr = name.rsplit(".", 1)
            kern = getattr(sys.modules[modname], attr)
            for mod in mods:  # the defining module and every module that imported the kernel by name
                for alias, obj in list(vars(mod).items()):
                    if obj is kern:
                        monkeypatch.setattr(mod, alias, recording(name, kern))
    calls = []
    n = fastconv.warmup(progress=lambda done, total, label: calls.append((done, total, label)))
    assert n == len(calls) > 0
    assert [c[0] for c in calls] == list(range(1, n + 1)) and {c[1] for c in calls} == {n}
    labels = " ".join(c[2] for c in calls)
    for strategy in fastconv.STRATEGIES:
        assert f"float32 {strategy} " in labels and f"float64 {strategy} " in labels
    missing = [(name, dt) for name in kernels if name not in called
               for dt in ("float32", "float64") if dt not in seen.get(name, ())]
    assert not missing, f"kernels warmup() did not call: {missing}"


def test_kernels_pass_no_int_or_bool_literal_to_kernels():
    """numba compiles a kernel once more for every int or bool literal another kernel passes it (``f(x, 1)`` is
    typed ``Literal[int](1)``): 11 helpers were compiled twice in a cold warmup.  Kernels pass the typed constants
    of ``fastconv._options`` (ZERO, ONE, TRUE, FALSE) instead.  Checked on the source, so that it does not depend
    on what the on-disk cache let this process compile."""
    import ast
    import inspect
    import textwrap

    from numba.core.registry import CPUDispatcher

    def resolve(node, names):
        if isinstance(node, ast.Name):
            return names.get(node.id)
        if isinstance(node, ast.Attribute):  # e.g. direct._fill_polyphase
            return getattr(resolve(node.value, names), node.attr, None)
        return None

    def literal(arg):
        if isinstance(arg, ast.UnaryOp) and isinstance(arg.op, ast.USub):
            arg = arg.operand
        return isinstance(arg, ast.Constant) and isinstance(arg.value, (bool, int))

    kernels, _ = _numba_kernels()
    calls = 0
    found = []
    for name, disp in kernels.items():
        func = disp.py_func
        for node in ast.walk(ast.parse(textwrap.dedent(inspect.getsource(func)))):
            if isinstance(node, ast.Call):
                callee = resolve(node.func, func.__globals__)
                if isinstance(getattr(callee, "dispatcher", callee), CPUDispatcher):
                    calls += 1
                    args = node.args + [k.value for k in node.keywords]
                    if any(literal(a) for a in args):
                        found.append(f"{name}: {ast.unparse(node)}")
    assert calls > 50  # the check sees the kernel-to-kernel calls (winograd's direct._fill_polyphase among them)
    assert not found, f"kernel calls passing a literal: {found}"


def test_warmup_one_dtype_and_progress_flag(capsys):
    n64 = fastconv.warmup("float64", progress=False)
    assert fastconv.warmup([np.float32, "float32"]) == n64  # deduplicated; the same calls per dtype
    assert fastconv.warmup(("float32", "float64")) == 2 * n64
    assert capsys.readouterr().err == ""
    fastconv.warmup(np.dtype("float64"), progress=True)
    assert "warmup" in capsys.readouterr().err


@pytest.mark.parametrize("dtypes", ["float16", ("float32", "int64"), (), None, 3, ["complex128"]])
def test_warmup_rejects_other_dtypes(dtypes):
    with pytest.raises(ValueError, match=r"dtypes.*float32.*float64"):
        fastconv.warmup(dtypes)


def test_warmup_rejects_a_bad_progress_argument():
    with pytest.raises(TypeError, match="progress"):
        fastconv.warmup("float64", progress="yes")
