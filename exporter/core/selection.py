"""Which rule selects a disk: the first rule, in policy order, whose globs all match.

Globs follow `fnmatch.fnmatchcase` (case-sensitive, `*` crosses `/`). Each list of globs is
compiled once into a single regex (`compile_globs`, cached on the pattern tuple), and a whole
rule list once into a `Selector` (`selector_for`, cached on the rules tuple), so planning 4,000
disks never compiles a pattern per disk.

A rule matches a disk when:
- the domain name matches one of `domains` (an empty list matches every domain) and none of
  `exclude_domains`;
- the target matches one of `disks` (empty: every target) and none of `exclude_disks`;
- `backing` is empty, or at least one image of the disk's backing chain matches one of it.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from functools import lru_cache

from exporter.core.model import Disk
from exporter.policy.values import Rule


@lru_cache(maxsize=4096)
def compile_globs(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    """One regex that matches a whole string when any glob does; None for no globs."""
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


def _any(regex: re.Pattern[str] | None, text: str, empty: bool) -> bool:
    if regex is None:
        return empty
    return regex.match(text) is not None


@dataclass(frozen=True)
class CompiledRule:
    rule: Rule
    domains: re.Pattern[str] | None
    exclude_domains: re.Pattern[str] | None
    disks: re.Pattern[str] | None
    exclude_disks: re.Pattern[str] | None
    backing: re.Pattern[str] | None
    keep_base: re.Pattern[str] | None

    @classmethod
    def of(cls, rule: Rule) -> CompiledRule:
        return cls(
            rule=rule,
            domains=compile_globs(rule.domains),
            exclude_domains=compile_globs(rule.exclude_domains),
            disks=compile_globs(rule.disks),
            exclude_disks=compile_globs(rule.exclude_disks),
            backing=compile_globs(rule.backing),
            keep_base=compile_globs((rule.keep_base,)) if rule.keep_base is not None else None,
        )

    def matches_domain(self, name: str) -> bool:
        return _any(self.domains, name, empty=True) and not _any(
            self.exclude_domains, name, empty=False
        )

    def matches_disk(self, disk: Disk) -> bool:
        """Target and backing globs only; call after `matches_domain`."""
        target = disk.target
        if not _any(self.disks, target, empty=True) or _any(self.exclude_disks, target, False):
            return False
        backing = self.backing
        if backing is None:
            return True
        return any(backing.match(image) is not None for image in disk.chain)

    def base_in(self, chain: tuple[str, ...]) -> str | None:
        """The nearest chain image matching `keep_base`; None without keep_base or a match."""
        if self.keep_base is None:
            return None
        for image in chain:
            if self.keep_base.match(image) is not None:
                return image
        return None


@dataclass(frozen=True)
class Selector:
    """A policy's rules, compiled. Ask `for_domain` once per domain, then `select` per disk."""

    rules: tuple[CompiledRule, ...]

    def for_domain(self, name: str) -> tuple[CompiledRule, ...]:
        """The rules whose domain globs accept `name`, in policy order."""
        return tuple(rule for rule in self.rules if rule.matches_domain(name))

    def select(self, domain: str, disk: Disk) -> CompiledRule | None:
        return first_match(self.for_domain(domain), disk)


def first_match(candidates: tuple[CompiledRule, ...], disk: Disk) -> CompiledRule | None:
    """The first of a domain's candidate rules that accepts the disk, or None."""
    for rule in candidates:
        if rule.matches_disk(disk):
            return rule
    return None


@lru_cache(maxsize=16)
def selector_for(rules: tuple[Rule, ...]) -> Selector:
    """The compiled selector of a rule list; cached, so a reload compiles exactly once."""
    return Selector(tuple(CompiledRule.of(rule) for rule in rules))


def select_rule(rules: tuple[Rule, ...], domain: str, disk: Disk) -> Rule | None:
    """The rule that selects `disk` of `domain`, or None when no rule does."""
    match = selector_for(rules).select(domain, disk)
    return match.rule if match is not None else None
