"""`make soak`: mixed load on the production topology for SOAK_SECONDS, nothing injected.

Samples the resident memory (RSS, summed over the process and its children) and the open file
descriptors of every process (roles and stores) at the start, every SOAK_SAMPLE_SECONDS and at
the end, and counts errors per interval. Flat means no steady growth; the numbers are
reported, not asserted (the soak is not part of `make test`).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from chaos import drills
from chaos.load import TRANSPORT_ERROR, Load
from chaos.topology import Topology, running_topology

PAGE = os.sysconf("SC_PAGE_SIZE")


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def _tree(pid: int) -> list[int]:
    pids, pending = [], [pid]
    while pending:
        current = pending.pop()
        pids.append(current)
        pending += _children(current)
    return pids


def rss_mb(pid: int) -> float:
    total = 0
    for member in _tree(pid):
        try:
            total += int(Path(f"/proc/{member}/statm").read_text().split()[1]) * PAGE
        except (OSError, ValueError, IndexError):
            continue
    return round(total / 2**20, 1)


def open_fds(pid: int) -> int:
    total = 0
    for member in _tree(pid):
        try:
            total += len(os.listdir(f"/proc/{member}/fd"))
        except OSError:
            continue
    return total


@dataclass
class Sampler:
    topology: Topology
    load: Load
    rows: list[dict[str, Any]] = field(default_factory=list)
    _errors_seen: int = 0

    def sample(self, started: float) -> None:
        errors = sum(1 for s in self.load.samples if s.status >= 500 or s.status == TRANSPORT_ERROR)
        self.rows.append({
            "t": round(time.monotonic() - started),
            "requests": len(self.load.samples),
            "errors_in_interval": errors - self._errors_seen,
            "processes": {
                name: {"rss_mb": rss_mb(pid), "fds": open_fds(pid)}
                for name, pid in self.topology.pids().items()
            },
        })  # fmt: skip
        self._errors_seen = errors


async def soak(seconds: float, sample_every: float, rate: float) -> dict[str, Any]:
    with running_topology() as topology:
        load = Load(topology.api_urls, rate=rate)
        try:
            await load.setup(users=20)
            sampler = Sampler(topology, load)
            started = time.monotonic()
            load.phase = "soak"
            task = asyncio.create_task(load.run(seconds, max_requests=int(rate * seconds) + 1))
            sampler.sample(started)
            while not task.done():
                await asyncio.wait({task}, timeout=sample_every)
                sampler.sample(started)
            await task
            order_ids = list(load.created)
            await asyncio.to_thread(_drain, topology, order_ids)
            books = drills.check_books(topology, order_ids)
        finally:
            await load.close()
    statuses: dict[str, int] = {}
    for s in load.samples:
        statuses[str(s.status)] = statuses.get(str(s.status), 0) + 1
    return {
        "seconds": seconds,
        "rate": rate,
        "requests": len(load.samples),
        "status_counts": statuses,
        "orders": len(order_ids),
        "lost": len(books.lost),
        "processed_twice": len(books.processed_twice),
        "samples": sampler.rows,
    }


def _drain(topology: Topology, order_ids: list[str], within: float = 120) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline and drills._unprocessed(topology, order_ids):
        time.sleep(0.5)


def table(report: dict[str, Any]) -> str:
    first, last = report["samples"][0], report["samples"][-1]
    # The first sample is taken before the load warms anything up; growth is measured from
    # the second one when there is one (caches, pools and imports filled by then).
    base = report["samples"][1] if len(report["samples"]) > 2 else first
    rows = [("process", f"RSS MB @{base['t']}s", f"RSS MB @{last['t']}s", "growth MB",
             f"fds @{base['t']}s", f"fds @{last['t']}s")]  # fmt: skip
    for name, end in last["processes"].items():
        start = base["processes"].get(name) or first["processes"].get(name)
        if start is None:
            continue
        rows.append((name, f"{start['rss_mb']:.1f}", f"{end['rss_mb']:.1f}",
                     f"{end['rss_mb'] - start['rss_mb']:+.1f}", str(start["fds"]),
                     str(end["fds"])))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |"
             for r in rows]  # fmt: skip
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    errors = [row["errors_in_interval"] for row in report["samples"]]
    lines.append(
        f"\n{report['requests']} requests in {report['seconds']:.0f} s, status counts "
        f"{report['status_counts']}, 5xx per interval {errors}; {report['orders']} orders, "
        f"lost {report['lost']}, processed twice {report['processed_twice']}"
    )
    return "\n".join(lines)


def main(seconds: float) -> int:
    sample_every = float(os.environ.get("SOAK_SAMPLE_SECONDS", str(min(60.0, seconds / 5))))
    rate = float(os.environ.get("SOAK_RATE", "30"))
    report = asyncio.run(soak(seconds, sample_every, rate))
    print(table(report))
    print(f"results: {drills.write_results('soak', report)}")
    return 1 if report["lost"] or report["processed_twice"] else 0
