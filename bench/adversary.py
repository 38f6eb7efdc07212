"""Adversary: try every probe of ``bench/probes`` against real ``flux-service serve`` processes (demo model).

Not a test: prints a markdown report for docs/benchmarks.md (probes tried / failed, and the peak resident
memory of the servers while they ran), and exits 1 when a probe found the service not holding. Loopback only
(127.0.0.1); every probe's loops are bounded. Run from the repository root:

    .venv/bin/python bench/adversary.py             # every probe
    .venv/bin/python bench/adversary.py --quick     # the fast ones (tests/test_adversary_quick.py runs this)
    .venv/bin/python bench/adversary.py -k origin   # probes whose name contains "origin"

Probes are functions in ``bench/probes/{http,jobs,trainings}.py`` (see ``bench/probes/__init__.py``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.probes import Failed, Target, http, jobs, trainings  # noqa: E402 - after the path insert
from bench.stats import rss_mib  # noqa: E402


class PeakRss:
    """Samples the resident memory of every running server every 50 ms; keeps the peak of their sum."""

    def __init__(self, target: Target) -> None:
        self.target, self.peak = target, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            total = sum(x for x in (rss_mib(pid) for pid in self.target.pids()) if x == x)
            self.peak = max(self.peak, total)

    def __enter__(self) -> "PeakRss":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the slow probes")
    ap.add_argument("-k", dest="match", help="only probes whose name contains this text")
    args = ap.parse_args(argv)
    probes = [p for m in (http, jobs, trainings) for p in m.PROBES
              if (not args.quick or not p.slow) and (not args.match or args.match.lower() in p.name.lower())]
    target = Target()
    rows, failed = [], 0
    started = time.perf_counter()
    try:
        with PeakRss(target) as rss:
            for probe in probes:
                t0 = time.perf_counter()
                try:
                    probe.run(target)
                    outcome = "held"
                except Failed as exc:
                    outcome, failed = f"FAILED: {exc}", failed + 1
                except Exception as exc:  # noqa: BLE001 - a probe's own bug is reported, not hidden
                    outcome, failed = f"ERROR: {type(exc).__name__}: {exc}", failed + 1
                    traceback.print_exc()
                row = f"| {probe.name} | {probe.severity} | {outcome} | {time.perf_counter() - t0:.1f} |"
                rows.append(row)
                print(row, flush=True)
    finally:
        target.close()
    print(f"\nprobes tried: {len(probes)}, failed: {failed}, servers' peak RSS: {rss.peak:.0f} MiB, "
          f"{time.perf_counter() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
