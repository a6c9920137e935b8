"""Unit tests run tiny models: extra OpenMP threads would only spin on 2 shared cores."""
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
