import os

import pytest

# Keep the test suite fast and deterministic on 2-core machines.
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `import freesolo` does: no spinning on shared cores

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
