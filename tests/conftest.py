import pathlib
import sys

import pytest

# Helper modules of the tests (reference.py, standins.py, single_thread.py) import as plain modules.
sys.path.insert(0, str(pathlib.Path(__file__).parent))

from single_thread import single_thread  # noqa: E402


@pytest.fixture
def one_thread():
    with single_thread():
        yield
