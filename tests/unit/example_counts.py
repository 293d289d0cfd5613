"""How many examples a hypothesis test runs under the profile in force (tests/conftest.py).

A test states the count it needs on CI, relative to hypothesis' default of 100 examples:
`@settings(max_examples=scaled(500))`. Under the `default` and `ci` profiles that is 500;
under `thorough` (max_examples 1000) it is 5,000. An explicit max_examples in `@settings`
would override every profile, so no property test sets one without this.
"""

from hypothesis import settings

HYPOTHESIS_DEFAULT = 100


def scaled(count: int) -> int:
    """`count` examples, times the loaded profile's max_examples / 100 (at least 1)."""
    default = settings.default
    assert default is not None
    return max(1, count * default.max_examples // HYPOTHESIS_DEFAULT)
