"""The calibserve image, built once per session for every container test (single container and scale stack)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.container.test_container import build_image


@pytest.fixture(scope="session")
def image() -> Iterator[str]:
    yield from build_image()
