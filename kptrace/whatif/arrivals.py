"""A core's interrupt arrivals held as columns: 36 bytes an arrival, where a tuple of
kptrace.walker.Arrival objects costs about 220 (measured; a 64 M-event trace has 7.3 M, and
each policy and bootstrap replicate holds its own copy). The walker still takes Arrival
objects: one is built when it is asked for (`arrivals[i]`), and a replay asks only for those
it takes one at a time."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import polars as pl

from kptrace.walker import Arrival


@dataclass(frozen=True, eq=False)
class Arrivals:
    """Arrivals in their given order: time, source (a code into `names`) and costs (ns)."""

    ts: np.ndarray
    code: np.ndarray
    names: tuple[str, ...]
    handler_ns: np.ndarray
    softirq_ns: np.ndarray
    indirect_ns: np.ndarray

    @classmethod
    def of(cls, arrivals: Iterable[Arrival]) -> Arrivals:
        """From Arrival objects (their tags are dropped: a replay input carries none)."""
        rows = list(arrivals)
        columns = [np.array([getattr(a, f) for a in rows], np.int64).reshape(len(rows))
                   for f in ("ts", "handler_ns", "softirq_ns", "indirect_ns")]
        names = tuple(dict.fromkeys(a.source for a in rows))
        index = {name: i for i, name in enumerate(names)}
        code = np.array([index[a.source] for a in rows], np.int32).reshape(len(rows))
        return cls(columns[0], code, names, *columns[1:])

    @classmethod
    def from_frame(cls, frame: pl.DataFrame) -> Arrivals:
        """From a frame of ts, source, handler_ns, softirq_ns, indirect_ns (row order kept)."""
        names = frame["source"].unique(maintain_order=True)
        code = frame["source"].replace_strict(names, pl.int_range(len(names), eager=True), return_dtype=pl.Int32)
        return cls(frame["ts"].to_numpy().astype(np.int64), code.to_numpy(), tuple(names.to_list()),
                   *(frame[c].to_numpy().astype(np.int64) for c in ("handler_ns", "softirq_ns", "indirect_ns")))

    def __len__(self) -> int:
        return len(self.ts)

    def __getitem__(self, i: int) -> Arrival:
        return Arrival(int(self.ts[i]), self.names[self.code[i]], int(self.handler_ns[i]), int(self.softirq_ns[i]),
                       int(self.indirect_ns[i]))

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __eq__(self, other: object) -> bool:
        numbers = ("ts", "handler_ns", "softirq_ns", "indirect_ns")
        return isinstance(other, Arrivals) and len(self) == len(other) and all(
            np.array_equal(getattr(self, f), getattr(other, f)) for f in numbers) and (
            [self.names[c] for c in self.code] == [other.names[c] for c in other.code])

    @property
    def span_ns(self) -> np.ndarray:
        """Each arrival's direct cost: its handler and the softirqs it runs."""
        return self.handler_ns + self.softirq_ns

    def sources(self) -> set[str]:
        """The sources that arrive at least once."""
        return {self.names[c] for c in np.unique(self.code)}

    def of_sources(self, sources: Iterable[str]) -> np.ndarray:
        """Mask of the arrivals from any of `sources`."""
        wanted = [i for i, name in enumerate(self.names) if name in set(sources)]
        return np.isin(self.code, wanted)

    def where(self, mask: np.ndarray) -> Arrivals:
        """The arrivals the mask keeps."""
        return Arrivals(self.ts[mask], self.code[mask], self.names, self.handler_ns[mask], self.softirq_ns[mask],
                        self.indirect_ns[mask])

    def with_costs(self, handler_ns: np.ndarray, softirq_ns: np.ndarray,
                   indirect_ns: np.ndarray | None = None) -> Arrivals:
        """The same arrivals with other costs."""
        return Arrivals(self.ts, self.code, self.names, handler_ns, softirq_ns,
                        self.indirect_ns if indirect_ns is None else indirect_ns)
