"""Fixtures shared by the test files."""

from __future__ import annotations

import pytest
from processes import Processes


@pytest.fixture
def processes():
    """Starts a test's processes (see ``tests/processes.py``); all are killed when it ends."""
    with Processes() as started:
        yield started
