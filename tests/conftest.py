import os

import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def model_root(tmp_path_factory):
    """Tiny random-weight diffusers pipeline folders, one per supported family (tests/tiny_pipelines.py)."""
    from tiny_pipelines import write

    root = tmp_path_factory.mktemp("models")
    write(root)
    return root


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models: torch's thread pool only adds overhead (a lot on a shared CPU); restored after the module."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
