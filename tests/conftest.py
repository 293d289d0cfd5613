"""Test layout: `tests/` and each test folder are plain directories (no packages), so pytest
puts them on sys.path and helpers import by module name (`from builders import rule`).

Hypothesis profiles, chosen by HYPOTHESIS_PROFILE (or pytest's `--hypothesis-profile NAME`):

- `default` (hypothesis' own; developers' runs): random examples, each run explores new ones;
  failures are kept in `.hypothesis/` and replayed first by the next run.
- `ci` (loaded when CI is set and HYPOTHESIS_PROFILE is not): derandomized, the same examples
  every run, so a red build is reproducible; no example database.
- `thorough` (local runs before merging anything the property tests cover): random, with ten
  times the examples of `default` and `ci`. Tests state their own count for CI through
  `example_counts.scaled`, which scales it by the profile's `max_examples` / 100.
"""

import os

from hypothesis import HealthCheck, settings

# Both from hypothesis' `default`, not from whatever profile is loaded now (hypothesis itself
# loads its own `ci` when it sees CI set).
DEFAULT = settings.get_profile("default")
settings.register_profile(
    "ci",
    DEFAULT,
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    DEFAULT,
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "default")
)
