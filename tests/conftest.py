import os
from pathlib import Path

import pytest

# Keep XLA on the host CPU and quiet; tests never need an accelerator.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Tests that run the CLI in-process must not write JAX's compilation cache into the user's home
# (tests/core/test_compilation_cache.py turns it on in subprocesses, in a temporary folder).
os.environ.setdefault("LABELFREE_COMPILATION_CACHE", "0")

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real microscopy folder ../shared/data; tests using it skip when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lives beside the repo as ../shared/data)")
    return SHARED_DATA
