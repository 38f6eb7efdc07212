"""Probes of ``POST /api/trainings``: hostile uploads, names, values, decompression bombs."""

from __future__ import annotations

from bench.probes import Probe

PROBES: list[Probe] = []
