"""The commit a summary and a report name: the checkout's, or 'unknown' where there is none."""

import re
import shutil

import pytest

from common.provenance import SOURCE_ROOT, git_commit


@pytest.mark.skipif(
    shutil.which("git") is None or not (SOURCE_ROOT / ".git").exists(), reason="not a checkout"
)
def test_a_checkout_names_its_commit():
    assert re.fullmatch(r"[0-9a-f]{7,40}(-dirty)?", git_commit())


def test_no_checkout_is_unknown(tmp_path):
    assert git_commit(tmp_path) == "unknown"
