"""The Prometheus text exposition format (0.0.4): label sets, metric families and two writers.

`write_text()` writes families straight to text; `client_metrics()` turns the same families into
prometheus_client `Metric`s. Their output is byte-identical (a unit test compares them); the
direct writer exists because it is several times faster at a few thousand disks (figures in
bench/RESULTS.md). Which metrics exist, and what they mean, is the catalogue's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client.metrics_core import Metric
from prometheus_client.utils import floatToGoString

from exporter.core.model import DiskKey


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


_DISK = ("disk", "domain")
_DISK_REASON = ("disk", "domain", "reason")


class Labels:
    """Label names (sorted) and values, with their exposition text rendered once and shared.

    Two objects per label set (this and its values tuple): at 4,000 disks every allocation
    shows up in render time, mostly as garbage-collector passes.
    """

    __slots__ = ("names", "text", "values")

    def __init__(self, names: tuple[str, ...], values: tuple[str, ...], text: str) -> None:
        self.names = names
        self.values = values
        self.text = text

    @classmethod
    def of(cls, **labels: str) -> Labels:
        names = tuple(sorted(labels))
        values = tuple(labels[n] for n in names)
        inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, values, strict=True))
        return cls(names, values, f"{{{inner}}}" if inner else "")

    @classmethod
    def disk(cls, key: DiskKey) -> Labels:
        disk, domain = key.disk, key.domain
        return cls(_DISK, (disk, domain), f'{{disk="{_escape(disk)}",domain="{_escape(domain)}"}}')

    def with_reason(self, reason: str) -> Labels:
        """Disk labels plus `reason`, which sorts after `disk` and `domain`."""
        return Labels(
            _DISK_REASON, (*self.values, reason), f'{self.text[:-1]},reason="{_escape(reason)}"}}'
        )

    @property
    def pairs(self) -> dict[str, str]:
        return dict(zip(self.names, self.values, strict=True))

    def __repr__(self) -> str:
        return f"Labels({self.text})"


NO_LABELS = Labels((), (), "")


@dataclass(frozen=True, slots=True)
class Family:
    """One metric family: parallel lists of labels and values (no per-sample tuples).

    A counter's `name` excludes `_total`; its samples add it. Only histograms need a suffix
    per sample (`_bucket`, `_count`, `_sum`).
    """

    name: str
    type: str  # gauge | counter | histogram
    help: str
    labels: list[Labels]
    values: list[float]
    suffixes: list[str] | None = None

    @property
    def exposed_name(self) -> str:
        return f"{self.name}_total" if self.type == "counter" else self.name

    def samples(self) -> Iterator[tuple[str, Labels, float]]:
        """(sample name, labels, value) in exposition order."""
        if self.suffixes is None:
            name = self.exposed_name
            for labels, value in zip(self.labels, self.values, strict=True):
                yield name, labels, value
        else:
            for suffix, labels, value in zip(self.suffixes, self.labels, self.values, strict=True):
                yield self.name + suffix, labels, value


def write_text(families: Iterable[Family]) -> bytes:
    """The families in the Prometheus text format 0.0.4."""
    out: list[str] = []
    append = out.append
    # Few distinct values (0, 1, small counts): format each once, Go style like prometheus_client.
    formatted: dict[float, str] = {}
    for family in families:
        name = family.exposed_name
        help_text = family.help.replace("\\", r"\\").replace("\n", r"\n")
        append(f"# HELP {name} {help_text}\n# TYPE {name} {family.type}\n")
        for sample, labels, value in family.samples():
            text = formatted.get(value)
            if text is None:
                text = formatted[value] = floatToGoString(value)
            append(f"{sample}{labels.text} {text}\n")
    # A domain name is not guaranteed to be valid UTF-8; a scrape must not fail on it.
    return "".join(out).encode("utf-8", errors="replace")


def client_metrics(families: Iterable[Family]) -> Iterator[Metric]:
    """The families as prometheus_client metrics, for a collector in a `CollectorRegistry`."""
    for family in families:
        metric = Metric(family.name, family.help, family.type)
        for sample, labels, value in family.samples():
            metric.add_sample(sample, labels.pairs, value)
        yield metric
