"""Durable jobs: the SQLite job store (``store``), what it forgets and when (``retention``), and what runs
again after a restart (``resume``). The routes and the worker only see ``JobStore``."""

from app.jobs.resume import pending_jobs
from app.jobs.store import JobStore, StoredJob

__all__ = ["JobStore", "StoredJob", "pending_jobs"]
