"""docs/migration.md: the book's SimpleConvNet switches to fastconv by adding one import, and computes the same numbers.

A textbook-layout tree is written to a temporary directory: ``common/layers.py`` (the book's layer classes --
the faithful copy in tests/test_layers.py) and ``ch07/simple_convnet.py`` (the book's SimpleConvNet,
abridged: the Japanese comments, ``accuracy`` and ``numerical_gradient`` left out; everything the
forward/backward/update path touches is as in the book).  The "after" file is the same text plus the one
line migration.md shows.  Both are imported as ordinary modules and compared in float64 with the book's
default architecture (1x28x28 input, 30 filters 5x5, hidden 100, output 10).
"""

from __future__ import annotations

import difflib
import importlib.util
import pickle
import sys

import numpy as np
import pytest

from fastconv import layers as fc_layers

BOOK_LAYERS = '''\
# The book's common/layers.py classes, from the verbatim copy in tests/test_layers.py.
from test_layers import TbAffine as Affine
from test_layers import TbConvolution as Convolution
from test_layers import TbPooling as Pooling
from test_layers import TbRelu as Relu
from test_layers import TbSoftmaxWithLoss as SoftmaxWithLoss
'''

SIMPLE_CONVNET = '''\
# coding: utf-8
import sys, os
sys.path.append(os.pardir)
import pickle
import numpy as np
from collections import OrderedDict
from common.layers import *


class SimpleConvNet:
    def __init__(self, input_dim=(1, 28, 28),
                 conv_param={'filter_num':30, 'filter_size':5, 'pad':0, 'stride':1},
                 hidden_size=100, output_size=10, weight_init_std=0.01):
        filter_num = conv_param['filter_num']
        filter_size = conv_param['filter_size']
        filter_pad = conv_param['pad']
        filter_stride = conv_param['stride']
        input_size = input_dim[1]
        conv_output_size = (input_size - filter_size + 2*filter_pad) / filter_stride + 1
        pool_output_size = int(filter_num * (conv_output_size/2) * (conv_output_size/2))

        self.params = {}
        self.params['W1'] = weight_init_std * \\
                            np.random.randn(filter_num, input_dim[0], filter_size, filter_size)
        self.params['b1'] = np.zeros(filter_num)
        self.params['W2'] = weight_init_std * \\
                            np.random.randn(pool_output_size, hidden_size)
        self.params['b2'] = np.zeros(hidden_size)
        self.params['W3'] = weight_init_std * \\
                            np.random.randn(hidden_size, output_size)
        self.params['b3'] = np.zeros(output_size)

        self.layers = OrderedDict()
        self.layers['Conv1'] = Convolution(self.params['W1'], self.params['b1'],
                                           conv_param['stride'], conv_param['pad'])
        self.layers['Relu1'] = Relu()
        self.layers['Pool1'] = Pooling(pool_h=2, pool_w=2, stride=2)
        self.layers['Affine1'] = Affine(self.params['W2'], self.params['b2'])
        self.layers['Relu2'] = Relu()
        self.layers['Affine2'] = Affine(self.params['W3'], self.params['b3'])

        self.last_layer = SoftmaxWithLoss()

    def predict(self, x):
        for layer in self.layers.values():
            x = layer.forward(x)

        return x

    def loss(self, x, t):
        y = self.predict(x)
        return self.last_layer.forward(y, t)

    def gradient(self, x, t):
        # forward
        self.loss(x, t)

        # backward
        dout = 1
        dout = self.last_layer.backward(dout)

        layers = list(self.layers.values())
        layers.reverse()
        for layer in layers:
            dout = layer.backward(dout)

        grads = {}
        grads['W1'], grads['b1'] = self.layers['Conv1'].dW, self.layers['Conv1'].db
        grads['W2'], grads['b2'] = self.layers['Affine1'].dW, self.layers['Affine1'].db
        grads['W3'], grads['b3'] = self.layers['Affine2'].dW, self.layers['Affine2'].db

        return grads

    def save_params(self, file_name="params.pkl"):
        params = {}
        for key, val in self.params.items():
            params[key] = val
        with open(file_name, 'wb') as f:
            pickle.dump(params, f)

    def load_params(self, file_name="params.pkl"):
        with open(file_name, 'rb') as f:
            params = pickle.load(f)
        for key, val in params.items():
            self.params[key] = val

        for i, key in enumerate(['Conv1', 'Affine1', 'Affine2']):
            self.layers[key].W = self.params['W' + str(i+1)]
            self.layers[key].b = self.params['b' + str(i+1)]
'''

THE_IMPORT = "from common.layers import *\n"
ONE_LINE = "from fastconv.layers import Convolution, Pooling\n"  # the line docs/migration.md adds


@pytest.fixture
def book(tmp_path, monkeypatch):
    """(before module, after module, the unified diff between the two files)."""
    (tmp_path / "common").mkdir()
    (tmp_path / "common" / "__init__.py").write_text("")
    (tmp_path / "common" / "layers.py").write_text(BOOK_LAYERS)
    (tmp_path / "ch07").mkdir()
    before = SIMPLE_CONVNET
    after = before.replace(THE_IMPORT, THE_IMPORT + ONE_LINE)
    (tmp_path / "ch07" / "simple_convnet.py").write_text(before)
    (tmp_path / "ch07" / "simple_convnet_fastconv.py").write_text(after)
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in [m for m in sys.modules if m == "common" or m.startswith("common.")]:
        monkeypatch.delitem(sys.modules, name)

    def load(name: str):
        spec = importlib.util.spec_from_file_location(f"book_{name}", tmp_path / "ch07" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    diff = list(difflib.unified_diff(before.splitlines(True), after.splitlines(True), n=0))
    return load("simple_convnet"), load("simple_convnet_fastconv"), diff


def _nets(book, seed=0, **kwargs):
    before, after, _ = book
    nets = []
    for module in (before, after):
        np.random.seed(seed)  # the book initialises with np.random.randn: both nets get the same weights
        nets.append(module.SimpleConvNet(**kwargs))
    return nets


def _mnist_like(n, seed):
    """Like the book's load_mnist(normalize=True): float32 pixels in [0, 1], int labels."""
    rng = np.random.default_rng(seed)
    x = rng.random((n, 1, 28, 28), dtype=np.float32)
    x[x < 0.6] = 0.0  # MNIST is mostly background: ReLU and max pooling see many exact zeros (ties)
    return x, rng.integers(0, 10, size=n)


def _assert_close(got, want, what):
    # float64 with the same products summed in another order (BLAS GEMM vs fastconv's loops): the difference is
    # a few ulps of the largest partial sums, far below 1e-12 of the array's scale.
    scale = max(float(np.abs(want).max()), 1e-300)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * scale, err_msg=what)


def test_the_change_is_one_added_line(book):
    _, _, diff = book
    changed = [ln for ln in diff if ln[:1] in "+-" and not ln.startswith(("+++", "---"))]
    assert changed == ["+" + ONE_LINE]


def test_after_the_import_the_conv_and_pool_layers_are_fastconvs(book):
    before_net, after_net = _nets(book)
    assert type(after_net.layers["Conv1"]) is fc_layers.Convolution
    assert type(after_net.layers["Pool1"]) is fc_layers.Pooling
    assert type(before_net.layers["Conv1"]) is not fc_layers.Convolution
    # Relu, Affine and SoftmaxWithLoss stay the book's
    assert type(after_net.layers["Affine1"]) is type(before_net.layers["Affine1"])


def test_same_loss_and_gradients_in_float64(book):
    before_net, after_net = _nets(book)
    x, t = _mnist_like(20, seed=1)
    loss_before, loss_after = before_net.loss(x, t), after_net.loss(x, t)
    assert np.isfinite(loss_before) and loss_after == pytest.approx(loss_before, rel=1e-13)
    g_before, g_after = before_net.gradient(x, t), after_net.gradient(x, t)
    assert sorted(g_after) == ["W1", "W2", "W3", "b1", "b2", "b3"]
    for key in g_before:
        assert g_after[key].dtype == np.float64 and g_after[key].shape == after_net.params[key].shape, key
        _assert_close(g_after[key], g_before[key], key)
    # Not vacuous: the conv gradients are non-zero and would differ if fastconv's conv or pool were wrong.
    assert np.abs(g_before["W1"]).max() > 0 and np.abs(g_before["b1"]).max() > 0


def test_a_few_training_steps_follow_the_same_path(book, tmp_path):
    """The book's SGD update (params[key] -= lr * grads[key], in place) reaches fastconv's layers too."""
    nets = _nets(book, seed=3)
    x, t = _mnist_like(60, seed=2)
    losses = [[], []]
    for step in range(4):
        xb, tb = x[step * 15:(step + 1) * 15], t[step * 15:(step + 1) * 15]
        for net, trace in zip(nets, losses, strict=True):
            grads = net.gradient(xb, tb)
            for key in net.params:
                net.params[key] -= 0.1 * grads[key]
            trace.append(net.loss(xb, tb))
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-11)
    assert losses[0][-1] != losses[0][0]  # the parameters did move
    for key in nets[0].params:
        _assert_close(nets[1].params[key], nets[0].params[key], key)
    # save_params / load_params: the fastconv net takes over the book net's parameters by reassigning layer.W
    path = str(tmp_path / "params.pkl")
    nets[0].save_params(path)
    fresh = _nets(book, seed=99)[1]
    fresh.load_params(path)
    with open(path, "rb") as f:
        assert set(pickle.load(f)) == set(nets[0].params)
    assert fresh.loss(x, t) == pytest.approx(nets[0].loss(x, t), rel=1e-12)


def test_pooling_with_padding_differs_only_where_the_book_pads_zeros():
    """migration.md's example: an all-negative input, pool 2x2 stride 2 pad 1 (-inf padding, not zeros)."""
    x = -np.arange(1.0, 17.0).reshape(1, 1, 4, 4)
    y = fc_layers.Pooling(2, 2, stride=2, pad=1).forward(x)
    np.testing.assert_array_equal(y[0, 0], [[-1, -2, -4], [-5, -6, -8], [-13, -14, -16]])
    # zero padding: every window touching the border would report 0; only the centre window is all real pixels
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    zero_padded = xp.reshape(1, 1, 3, 2, 3, 2).max(axis=(3, 5))
    assert (zero_padded[0, 0] == 0).sum() == 8 and zero_padded[0, 0, 1, 1] == -6
    assert y[0, 0, 1, 1] == -6
