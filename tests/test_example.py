"""docs/examples/train_digits.py: a short training run learns the digits (skipped without scikit-learn)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "docs" / "examples" / "train_digits.py"


@pytest.fixture(scope="module")
def train_digits():
    pytest.importorskip("sklearn")
    spec = importlib.util.spec_from_file_location("train_digits", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_short_training_run_learns_the_digits(train_digits, capsys):
    # 6 epochs of the full example's 15 (the full run reaches >= 97%).  With the cosine schedule compressed into
    # 6 epochs, seeds 0-2 reached 89-94% here; a net that learned nothing scores ~10%, so 80% fails if any
    # forward or backward pass of the net is wrong.
    acc = train_digits.train(epochs=6, seed=0, quiet=True)
    assert 0.8 <= acc <= 1.0
    assert capsys.readouterr().out == ""  # quiet


def test_training_is_reproducible_and_prints_progress(train_digits, capsys):
    a = train_digits.train(epochs=1, seed=1, quiet=False)
    out = capsys.readouterr()
    assert "epoch 1/1" in out.err or "epoch 1/1" in out.out  # the bar (tqdm, or a text bar on a terminal)
    # the epoch's summary line, below the bar, with or without tqdm
    assert re.search(r"^epoch 1/1: loss \d+\.\d+, test accuracy \d+\.\d+%, \d+\.\d s$", out.out, re.M), out.out
    assert train_digits.train(epochs=1, seed=1, quiet=True) == a


def test_random_shift_moves_images_by_at_most_one_pixel(train_digits):
    rng = np.random.default_rng(0)
    x = np.zeros((50, 1, 8, 8), dtype=np.float32)
    x[:, 0, 3, 4] = 1.0
    shifted = train_digits.random_shift(x, rng)
    assert shifted.shape == x.shape and shifted.dtype == np.float32
    pos = np.argwhere(shifted[:, 0] == 1.0)
    assert len(pos) == 50  # one pixel each, moved not lost
    assert set(pos[:, 1]) == {2, 3, 4} and set(pos[:, 2]) == {3, 4, 5}


def test_softmax_cross_entropy_gradient_matches_finite_differences(train_digits):
    rng = np.random.default_rng(0)
    logits, labels = rng.standard_normal((4, 10)), rng.integers(0, 10, size=4)
    loss, grad = train_digits.softmax_cross_entropy(logits, labels)
    eps, num = 1e-6, np.zeros_like(logits)
    for i in np.ndindex(logits.shape):
        d = np.zeros_like(logits)
        d[i] = eps
        num[i] = (train_digits.softmax_cross_entropy(logits + d, labels)[0]
                  - train_digits.softmax_cross_entropy(logits - d, labels)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-5, atol=1e-8)  # central differences, float64: ~1e-9 error


def test_progress_bar_without_tqdm(train_digits, monkeypatch, capsys):
    """Without tqdm the example still shows a bar per epoch (on a terminal) and prints each epoch's summary."""
    import io
    import sys

    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # "import tqdm.auto" now raises ImportError
    train_digits.train(epochs=1, seed=1, quiet=False)
    assert re.match(r"epoch 1/1: loss \d+\.\d+, test accuracy \d+\.\d+%, \d+\.\d s$", capsys.readouterr().out)

    class Tty(io.StringIO):
        def isatty(self):
            return True

    stream = Tty()
    bar = train_digits.TextBar(4, "epoch 2/3", stream=stream)
    for i in bar:
        bar.set_postfix(loss=f"{i:.3f}")
    bar.close()
    assert "\repoch 2/3 [##########..........] 2/4 loss=1.000" in stream.getvalue()
    assert "\repoch 2/3 [####################] 4/4 loss=3.000" in stream.getvalue()
    assert stream.getvalue().endswith("\r\033[K")  # cleared for the summary line
