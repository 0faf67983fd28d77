"""Every test under tests/integration talks to the real testbed."""

from __future__ import annotations

import pytest

from ..conftest import Testbed


@pytest.fixture(autouse=True)
def _require_testbed(testbed: Testbed) -> Testbed:
    return testbed
