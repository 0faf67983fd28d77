"""Every test under tests/integration talks to the real testbed."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest

import dispatch.aio as dx
from dispatch.aio import Pool

from ..conftest import Testbed


@pytest.fixture(autouse=True)
def _require_testbed(testbed: Testbed) -> Testbed:
    return testbed


@pytest.fixture
async def pool(testbed: Testbed) -> AsyncIterator[Pool]:
    """A pool of the test's own, current inside the test (closed afterwards)."""
    async with Pool() as p:
        yield p


@pytest.fixture
async def rdir(testbed: Testbed, pool: Pool) -> AsyncIterator[str]:
    """A fresh remote directory (relative to the home directory), removed afterwards
    (made writable first: tests leave read-only files in it)."""
    name = f"dispatch-test-{secrets.token_hex(4)}"
    assert (await dx.run(["mkdir", name], testbed.plain)).ok
    yield name
    await dx.run(["chmod", "-R", "u+w", name], testbed.plain)
    await dx.run(["rm", "-rf", name], testbed.plain)
