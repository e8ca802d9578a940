import os

import pytest

# Keep the test suite fast and deterministic on 2-core machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import unsolo` does: no spinning on shared cores

import torch  # noqa: E402

torch.set_num_threads(2)

SHARED = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "..", "shared")


@pytest.fixture(scope="session")
def shared_dir():
    """The read-only ../shared folder (reference outputs of the official implementation)."""
    path = os.path.abspath(SHARED)
    if not os.path.isdir(os.path.join(path, "parity")):
        pytest.skip("../shared/parity is not available next to this checkout")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small convolutions run faster on one thread, above all when other jobs share the 2 cores
    (use with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
