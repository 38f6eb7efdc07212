"""Which LoRA files are resident, under which names, for which tasks: the engine's LoRA registry.

Why apart from the engine: the engine generates; this decides what a LoRA name or path means (one path rule,
``paths.py``), loads each file once through the adapter strategy, remembers the provenance every result
reports (file label, sha256, rank, scales, trigger words) and the warning a stand-in LoRA carries, and lets a
Ray replica unload and reload files. It is not locked: the engine calls it under its own lock.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from pipelines.errors import AdapterError, ConfigError
from pipelines.lora.files import read_lora, resolve_weights_file
from pipelines.lora.paths import display_path, locate_lora, task_lora_path
from pipelines.lora.strategy import AdapterStrategy
from pipelines.tasks import LoraEntry, TaskConfig, TaskTable

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResidentAdapter:
    name: str
    file: Path
    format: str
    rank: int
    #: provenance, fixed when the file was read: path relative to the models folder (``demo:...`` for the
    #: demo's own LoRA, never absolute) and the file's sha256 (full hex; ``short_hash`` as ``lora inspect`` prints)
    label: str = ""
    sha256: str = ""
    scales: dict = field(default_factory=dict)  # effective scale at strength 1.0 per module group
    components: tuple[str, ...] = ("transformer",)
    dora: bool = False
    trigger_words: tuple[str, ...] = ()  # what the LoRA file ships with (kohya ss_*, config.yaml)
    alpha: float | None = None
    modules: tuple[str, ...] = ()  # the layers it adapts, e.g. transformer_blocks.0.attn.to_q

    @property
    def short_hash(self) -> str:
        """First 12 hex digits of the sha256: ``adapter_hash`` in results, as ``lora inspect`` prints it."""
        return self.sha256[:12]


class LoraResidency:
    """Resident adapters by file, registered names (``[loras.NAME]``, a task's path shorthand), task -> first
    adapter (fixed at start-up, so a request never touches the LoRA files again), and per-name warnings."""

    def __init__(self, adapters: AdapterStrategy, settings, tasks: TaskTable, demo_root: Path | None) -> None:
        self.adapters = adapters
        self.settings = settings
        self.tasks = tasks
        #: the demo model's folder (where its own LoRA lives); None on a real model
        self.demo_root = demo_root
        self.resident: dict[Path, ResidentAdapter] = {}
        #: registered LoRA name ([loras.NAME] or a task's path shorthand) -> its resident adapter
        self.named: dict[str, ResidentAdapter] = {}
        #: task name -> its (first) adapter
        self.task_adapters: dict[str, ResidentAdapter] = {}
        #: registered LoRA name -> the warning every result using it carries (the demo's LoRA standing in)
        self.notes: dict[str, str] = {}

    def load_table(self) -> None:
        """Make every LoRA of the task table resident and bind each task to its adapters (start-up)."""
        users: dict[str, list[str]] = {}
        for task in self.tasks.tasks.values():
            for lora_name, _ in task.loras:
                users.setdefault(lora_name, []).append(task.name)
        for entry in self.tasks.loras.values():
            self.register(entry, users.get(entry.name, []))
        for task in self.tasks.tasks.values():
            self.bind_task(task)

    def bind_task(self, task: TaskConfig) -> None:
        if task.loras:
            self.task_adapters[task.name] = self.named[task.loras[0][0]]
            self.apply_trigger_words(task, [self.named[n] for n, _ in task.loras])

    def register(self, entry: LoraEntry, users: list[str]) -> ResidentAdapter:
        """Make a registered LoRA resident under its name; its path resolves like every LoRA path
        (``pipelines.lora.paths.locate_lora``: relative to the models folder, the demo's own LoRA standing in on the demo
        model only when the user has no file there, with a warning every result using it carries)."""
        try:
            where = locate_lora(task_lora_path(entry.path, self.settings.models_dir),
                                models_dir=self.settings.models_dir, demo_root=self.demo_root)
            adapter = self.named[entry.name] = self.adapter_for(where.path, name=entry.name)
        except AdapterError as exc:
            who = (f"task {users[0]!r}" if entry.implicit and users else
                   f"LoRA {entry.name!r} ([loras.{entry.name}] in {self.tasks.source})")
            raise type(exc)(f"{who}: {exc.message}", path=exc.path) from None
        if where.note:
            self.notes[entry.name] = where.note
        return adapter

    def resident_again(self, adapter: ResidentAdapter) -> ResidentAdapter:
        """An adapter unloaded by a Ray replica's LRU is loaded again (same file, same name) when a request
        needs it; every registered name and task pointing at that file follows."""
        if self.resident.get(adapter.file) is adapter:
            return adapter
        fresh = self.resident.get(adapter.file) or self.adapter_for(adapter.file, name=adapter.name)
        for n, a in list(self.named.items()):
            if a.file == adapter.file:
                self.named[n] = fresh
        for t, a in list(self.task_adapters.items()):
            if a.file == adapter.file:
                self.task_adapters[t] = fresh
        return fresh

    def locate(self, path: str | Path) -> tuple[Path, str | None]:
        """Python API paths, resolved like task paths (see ``pipelines.lora.paths.locate_lora``): (path, warning or None)."""
        where = locate_lora(path, models_dir=self.settings.models_dir, demo_root=self.demo_root)
        return where.path, where.note

    def label(self, file: Path) -> str:
        """A LoRA file as results name it: relative to the models folder, ``demo:...``, never absolute."""
        return display_path(file, models_dir=self.settings.models_dir, demo_root=self.demo_root)

    def apply_trigger_words(self, task: TaskConfig, adapters: list[ResidentAdapter]) -> None:
        """``trigger_words = "from-lora"``: the words the task's LoRA files ship with (every LoRA of the task,
        in order, each word once), fixed at start-up."""
        if not task.trigger_words_from_lora:
            return
        words = tuple(dict.fromkeys(w for a in adapters for w in a.trigger_words))
        if not words:
            labels = ", ".join(a.label for a in adapters)
            raise ConfigError(f"task {task.name!r} says trigger_words = \"from-lora\" but its LoRA {labels} "
                              "records none (no kohya ss_tag_frequency / modelspec.trigger_phrase, no config.yaml "
                              "trigger_word beside it); list the words in the task table instead")
        self.tasks.tasks[task.name] = replace(task, trigger_words=words)
        logger.info("task %s: trigger words from its LoRA: %s", task.name, ", ".join(words))

    def adapter_for(self, path: Path, name: str | None = None) -> ResidentAdapter:
        """Load a LoRA once; later calls with the same file get the resident adapter (never re-read)."""
        weights = resolve_weights_file(path).resolve()
        if weights in self.resident:
            return self.resident[weights]
        lora = read_lora(weights)
        base = name or (weights.parent.name if weights.name in ("pytorch_lora_weights.safetensors",
                                                                "adapter_model.safetensors") else weights.stem)
        name, n = base, 2
        taken = {a.name for a in self.resident.values()}
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        started = time.perf_counter()
        self.adapters.load(name, lora)
        adapter = ResidentAdapter(name=name, file=weights, format=lora.format, rank=lora.rank,
                                  label=self.label(weights), sha256=lora.sha256,
                                  scales=lora.scale_summary(), components=tuple(lora.components),
                                  dora=lora.is_dora, trigger_words=tuple(lora.trigger_words), alpha=lora.alpha,
                                  modules=tuple(lora.modules))
        self.resident[weights] = adapter
        logger.info("LoRA loaded: %s [sha256 %s] as adapter %r (%s layout%s, %s, rank %d, scale at strength 1: %s, "
                    "%d tensors, %.2fs)", adapter.label, adapter.short_hash, name, lora.format,
                    ", DoRA" if lora.is_dora else "", " + ".join(adapter.components), lora.rank,
                    ", ".join(f"{k} x{v:g}" for k, v in adapter.scales.items()), len(lora.state_dict),
                    time.perf_counter() - started)
        return adapter

    def unload(self, file: str | Path) -> bool:
        """Free one resident LoRA so a replica holds at most its N most recently used (app/ray_serve). The
        next request that needs it loads it again from the same file. Needs ``AdapterStrategy.unload``."""
        weights = resolve_weights_file(Path(file)).resolve()
        adapter = self.resident.get(weights)
        if adapter is None:
            return False
        self.adapters.unload(adapter.name)  # type: ignore[attr-defined]
        del self.resident[weights]
        logger.info("LoRA unloaded: %s (adapter %r); it loads again when a request needs it",
                    weights, adapter.name)
        return True

