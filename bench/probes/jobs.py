"""Probes of the job system: the job store under faults, job ids, stored images."""

from __future__ import annotations

from bench.probes import Probe

PROBES: list[Probe] = []
