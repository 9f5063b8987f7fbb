"""Train a LeNet-style CNN on scikit-learn's 8x8 handwritten digits, with fastconv's forward and backward passes.

    conv 3x3 (1 -> 16) -> ReLU -> max-pool 2x2 -> conv 3x3 (16 -> 32) -> ReLU -> max-pool 2x2 -> dense (128 -> 10)

The convolution and pooling layers are :mod:`fastconv.layers` objects (thin wrappers over
``fastconv.conv2d`` / ``conv2d_backward`` / ``max_pool2d`` / ``max_pool2d_backward``); ReLU, the dense
layer, softmax cross-entropy and the Adam optimizer are a few lines of NumPy below.  Everything
runs in float32.  The data set is ``sklearn.datasets.load_digits`` (1797 images, shipped with
scikit-learn: no download).

Run::

    pip install "fastconv[digits]"        # scikit-learn (and tqdm for progress bars)
    python docs/examples/train_digits.py  # --epochs N --seed S --quiet

or from Python::

    from train_digits import train
    test_accuracy = train(epochs=15, seed=0)
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from fastconv import layers

DTYPE = np.float32


def load_data(seed: int = 0, test_fraction: float = 0.2):
    """The digits as float32 (N, 1, 8, 8) images in [0, 1] and int labels, split stratified into train and test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(DTYPE)[:, None, :, :]
    return train_test_split(x, digits.target, test_size=test_fraction, random_state=seed, stratify=digits.target)


class Dense:
    """``y = x @ W + b`` on flattened input, initialised like ``torch.nn.Linear``."""

    def __init__(self, n_in: int, n_out: int, rng: np.random.Generator) -> None:
        bound = 1.0 / np.sqrt(n_in)
        self.weight = rng.uniform(-bound, bound, size=(n_in, n_out)).astype(DTYPE)
        self.bias = rng.uniform(-bound, bound, size=n_out).astype(DTYPE)

    def forward(self, x: np.ndarray) -> np.ndarray:
        self.x_shape = x.shape
        self.x = x.reshape(x.shape[0], -1)
        return self.x @ self.weight + self.bias

    def backward(self, dy: np.ndarray) -> np.ndarray:
        self.weight_grad = self.x.T @ dy
        self.bias_grad = dy.sum(axis=0)
        return (dy @ self.weight.T).reshape(self.x_shape)


class ReLU:
    def forward(self, x: np.ndarray) -> np.ndarray:
        self.mask = x > 0
        return x * self.mask

    def backward(self, dy: np.ndarray) -> np.ndarray:
        return dy * self.mask


class LeNet:
    """The network: a list of layers with ``forward``/``backward``; parameters are (array, gradient name) pairs."""

    def __init__(self, seed: int = 0, channels: tuple[int, int] = (16, 32)) -> None:
        rng = np.random.default_rng(seed)
        c1, c2 = channels
        self.layers = [
            layers.Conv2d(1, c1, 3, padding=1, seed=rng),  # (N, c1, 8, 8)
            ReLU(),
            layers.MaxPool2d(2),  # (N, c1, 4, 4)
            layers.Conv2d(c1, c2, 3, padding=1, seed=rng),  # (N, c2, 4, 4)
            ReLU(),
            layers.MaxPool2d(2),  # (N, c2, 2, 2)
            Dense(c2 * 2 * 2, 10, rng),
        ]

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def backward(self, dlogits: np.ndarray) -> None:
        for layer in reversed(self.layers):
            dlogits = layer.backward(dlogits)

    def parameters(self) -> list[tuple[object, str]]:
        """(layer, attribute) of every parameter; its gradient is ``attribute + "_grad"``."""
        return [(layer, name) for layer in self.layers for name in ("weight", "bias") if hasattr(layer, name)]

    def predict(self, x: np.ndarray, batch_size: int = 512) -> np.ndarray:
        return np.concatenate([self.forward(x[i:i + batch_size]).argmax(axis=1) for i in range(0, len(x), batch_size)])


def random_shift(x: np.ndarray, rng: np.random.Generator, max_shift: int = 1) -> np.ndarray:
    """Each image moved by a random whole number of pixels in [-max_shift, max_shift] on each axis (zeros fill in)."""
    n, _, h, w = x.shape
    p = max_shift
    padded = np.pad(x[:, 0], ((0, 0), (p, p), (p, p)))
    rows = rng.integers(0, 2 * p + 1, size=n)[:, None] + np.arange(h)  # (n, h) rows of the padded image
    cols = rng.integers(0, 2 * p + 1, size=n)[:, None] + np.arange(w)
    return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]][:, None]


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy loss and its gradient in the logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    n = len(labels)
    loss = float(-np.log(p[np.arange(n), labels] + 1e-12).mean())
    p[np.arange(n), labels] -= 1.0
    return loss, p / n


class Adam:
    """Adam (Kingma & Ba); the learning rate is given to each ``step``."""

    def __init__(self, params: list[tuple[object, str]], betas=(0.9, 0.999), eps: float = 1e-8):
        self.params, self.betas, self.eps, self.t = params, betas, eps, 0
        self.m = [np.zeros_like(getattr(layer, name)) for layer, name in params]
        self.v = [np.zeros_like(getattr(layer, name)) for layer, name in params]

    def step(self, lr: float) -> None:
        self.t += 1
        b1, b2 = self.betas
        scale = lr * np.sqrt(1 - b2**self.t) / (1 - b1**self.t)
        for (layer, name), m, v in zip(self.params, self.m, self.v, strict=True):
            g = getattr(layer, name + "_grad")
            m *= b1
            m += (1 - b1) * g
            v *= b2
            v += (1 - b2) * g * g
            getattr(layer, name)[...] -= (scale * m / (np.sqrt(v) + self.eps)).astype(DTYPE)


class TextBar:
    """A minimal stand-in for tqdm: ``epoch 3/15 [#####.....] 23/45 loss=0.123`` redrawn on a terminal's stderr."""

    def __init__(self, n: int, desc: str, stream=None) -> None:
        self.n, self.desc, self.postfix = n, desc, ""
        self.stream = sys.stderr if stream is None else stream
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())  # in a log file, only the summary line

    def __iter__(self):
        for i in range(self.n):
            yield i
            if self.live:
                done = 20 * (i + 1) // self.n
                self.stream.write(f"\r{self.desc} [{'#' * done}{'.' * (20 - done)}] {i + 1}/{self.n} {self.postfix}")
                self.stream.flush()

    def set_postfix(self, refresh: bool = False, **values) -> None:
        self.postfix = " ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")  # clear the bar; train() prints the epoch's summary line
            self.stream.flush()


def _batches(quiet: bool, n_batches: int, epoch: int, epochs: int):
    """(bar, batch numbers) for one epoch: a tqdm bar when tqdm is installed, else a :class:`TextBar`."""
    if quiet:
        return None, range(n_batches)
    try:
        from tqdm.auto import tqdm
    except ImportError:
        bar = TextBar(n_batches, f"epoch {epoch}/{epochs}")
        return bar, bar
    bar = tqdm(range(n_batches), desc=f"epoch {epoch}/{epochs}", unit="batch", leave=True)
    return bar, bar


def train(
    epochs: int = 15,
    batch_size: int = 32,
    lr: float = 3e-3,
    seed: int = 0,
    quiet: bool = False,
    augment: bool = True,
    channels: tuple[int, int] = (16, 32),
) -> float:
    """Train from scratch on the digits; return the accuracy on the held-out 20% (a fraction in [0, 1]).

    ``lr`` is Adam's initial learning rate (cosine decay to 0); ``augment`` shifts training images by
    up to one pixel; ``channels`` are the two conv layers' widths.  Unless ``quiet``, shows a
    progress bar per epoch (tqdm if installed, else a plain text bar on a terminal's stderr) and
    then a line with the epoch's loss, test accuracy and elapsed time.
    """
    x_train, x_test, y_train, y_test = load_data(seed)
    net = LeNet(seed, channels)
    opt = Adam(net.parameters())
    rng = np.random.default_rng(seed)
    n_batches = -(-len(x_train) // batch_size)
    total_steps, step = epochs * n_batches, 0
    start = time.perf_counter()
    test_acc = 0.0
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        bar, batches = _batches(quiet, n_batches, epoch, epochs)
        total_loss = 0.0
        for i in batches:
            idx = order[i * batch_size:(i + 1) * batch_size]
            xb = random_shift(x_train[idx], rng) if augment else x_train[idx]
            loss, dlogits = softmax_cross_entropy(net.forward(xb), y_train[idx])
            net.backward(dlogits)
            # cosine decay of the learning rate from lr to 0 over the whole run
            opt.step(0.5 * lr * (1 + np.cos(np.pi * step / total_steps)))
            step += 1
            total_loss += loss * len(idx)
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.3f}", refresh=False)
        test_acc = float((net.predict(x_test) == y_test).mean())
        elapsed = time.perf_counter() - start
        summary = f"loss {total_loss / len(x_train):.4f}, test accuracy {test_acc:.2%}, {elapsed:.1f} s"
        if bar is not None:
            bar.close()
        if not quiet:
            print(f"epoch {epoch}/{epochs}: {summary}", flush=True)
    return test_acc


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no per-epoch output")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    acc = train(epochs=args.epochs, seed=args.seed, quiet=args.quiet)
    print(f"test accuracy {acc:.2%} after {args.epochs} epochs, {time.perf_counter() - start:.1f} s in total")


if __name__ == "__main__":
    main()
