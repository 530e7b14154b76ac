import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    # tiny models: threads only add contention on shared CI cores
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
