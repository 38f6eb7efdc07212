"""Which LoRAs an engine replica keeps resident, and the routing key that sends a request where they are.

Why per file and not per request: a request may combine several LoRAs (a task's two, or a task's plus the
request's ``loras``), and sets overlap (``{host}`` and ``{host, film}``). The routing key (Ray Serve's
multiplexed model id) is the request's whole set, so Ray prefers a replica that served that set recently;
residency is counted in files, so every LoRA of every set is tracked and ``FLUX_RAY_MAX_LORAS`` bounds what
a replica holds whatever the combinations (before, only a set's first LoRA was tracked and the others stayed
resident for good). The set being served is never unloaded, even when it alone is larger than the bound.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict

logger = logging.getLogger(__name__)


def lora_set_id(engine, job) -> str:
    """The multiplexing model id: the job's resolved LoRA files, sorted, as JSON ("" = base model, any replica)."""
    if job.adapter is None and not getattr(job.request, "loras", None):
        return ""
    plan = engine.plan(job.request)  # cheap; the files are already known to the planning engine
    files = sorted({str(x.adapter.file) for x in plan.loras})
    return json.dumps(files) if files else ""


def files_of(model_id: str) -> list[str]:
    return json.loads(model_id) if model_id else []


class LoraLru:
    """The replica's resident LoRA files, least recently used first; called with the engine idle."""

    def __init__(self, engine, max_loras: int) -> None:
        self.engine, self.max_loras = engine, max_loras
        self._order: OrderedDict[str, None] = OrderedDict()

    def use(self, files: list[str]) -> list[str]:
        """Make ``files`` resident (most recent now) and unload the least recently used beyond the bound;
        returns the files unloaded."""
        for file in files:
            self.engine.ensure_adapter(file)
            self._order[file] = None
            self._order.move_to_end(file)
        unloaded = []
        for file in list(self._order):
            if len(self._order) <= self.max_loras:
                break
            if file in files:
                continue
            self.engine.unload_adapter(file)
            del self._order[file]
            unloaded.append(file)
        return unloaded

    def resident(self) -> list[str]:
        return list(self._order)
