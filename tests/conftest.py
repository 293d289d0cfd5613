"""Test layout: `tests/` and each test folder are plain directories (no packages), so pytest
puts them on sys.path and helpers import by module name (`from builders import rule`).

In CI, hypothesis runs derandomized: the same examples every run, so a red build is
reproducible; developers' runs keep exploring new examples."""

import os

from hypothesis import settings

settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")
