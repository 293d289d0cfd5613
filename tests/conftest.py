"""Test layout: `tests/` and each test folder are plain directories (no packages), so pytest
puts them on sys.path and helpers import by module name (`from builders import rule`)."""
