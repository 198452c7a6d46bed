"""The README's configuration table lists exactly the settings the service reads."""

from __future__ import annotations

import re

import pytest

from service.settings import ENV_PREFIX, Settings
from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.unit


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    documented = set(re.findall(r"^\| `(CALIBSERVE_[A-Z_]+)` \|", readme, flags=re.MULTILINE))
    expected = {f"{ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert documented == expected
