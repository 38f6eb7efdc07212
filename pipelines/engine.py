"""The engine: one resident FLUX pipeline, its resident LoRA adapters, and ``generate``.

Setup once, predict many (cog-flux's ``setup``/``predict``): ``FluxEngine.from_settings`` loads the model
and every adapter the task table names, so a bad configuration fails at start-up, never on a request;
``generate`` only reads parameters, switches the active adapter and runs diffusers. The same object serves
the HTTP app, the CLI, ``ModelManager`` and ``FluxPipeline`` (and later a Ray Serve deployment): it knows
nothing about HTTP. It is not re-entrant; a lock serialises callers that share it.
"""

from __future__ import annotations

import gc
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from .adapters import AdapterStrategy, PeftAdapters
from .compile import CompileCounter, compile_transformer, should_compile
from .errors import AdapterError, ConfigError, InvalidRequest, OutOfMemory
from .fused_adapters import FusedAdapters
from .lora_files import read_lora, resolve_weights_file
from .lora_paths import display_path, locate_lora, task_lora_path
from .lora_registry import ActiveLora, describe_loras, plan_loras
from .model_source import MODEL_TYPES, ModelSource, load_pipeline, pick_device, resolve_model_source
from .preview import Preview, Previewer, preview_image
from .prompt_check import check_prompt
from .quantize import check_quantize
from .prompt_stage import TRANSLATE_MODES, PromptStage, StagedPrompt, build_prompt_stage
from .settings import Settings, load_settings
from .tasks import MAX_LORA_ALPHA, MIN_LORA_ALPHA, LoraEntry, TaskConfig, TaskTable, load_task_table
from .types import GenerationInfo, GenerationRequest, GenerationResult, ProgressCallback, TaskInfo

logger = logging.getLogger(__name__)

MAX_GUIDANCE = 20.0
MAX_SEED = 2**63 - 1


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


@dataclass(frozen=True)
class Plan:
    """A request with every default filled in and every limit checked: what ``generate`` will do."""

    prompt: str
    task: str | None
    adapter: ResidentAdapter | None
    lora_scale: float
    width: int
    height: int
    num_inference_steps: int
    guidance_scale: float
    seed: int
    notes: tuple[str, ...] = ()
    #: every LoRA of this generation (the task's, the request's ``loras``), in order; ``adapter`` is the first
    loras: tuple[ActiveLora, ...] = ()
    #: the prompt stage's record (glossary, translation); ``prompt`` is its English with the task's template
    staged: StagedPrompt | None = None
    prompt_as_typed: str = ""  # what ``prompt`` would be with translate=off (for the before/after T5 share)


class FluxEngine:
    def __init__(self, pipe, source: ModelSource, settings: Settings, device: str, dtype,
                 tasks: TaskTable | None = None, adapters: AdapterStrategy | None = None,
                 prompt_stage: PromptStage | None = None) -> None:
        self.pipe = pipe
        self.source = source
        self.settings = settings
        self.device = device
        self.dtype = dtype
        self.tasks = tasks or TaskTable(source=Path("<none>"))
        self.adapters: AdapterStrategy = adapters or (
            PeftAdapters(pipe) if settings.adapters == "peft" else FusedAdapters(pipe, settings.fused_backup))
        #: glossary + optional translator, applied to every prompt before the task's template (setup once)
        self.prompt_stage = prompt_stage or build_prompt_stage(settings, pipe.tokenizer_2, device, source.demo)
        self._resident: dict[Path, ResidentAdapter] = {}
        #: registered LoRA name ([loras.NAME] or a task's path shorthand) -> its resident adapter
        self._named: dict[str, ResidentAdapter] = {}
        #: task name -> its (first) adapter, fixed at start-up so a request never touches the LoRA files again
        self._task_adapters: dict[str, ResidentAdapter] = {}
        #: registered LoRA name -> the warning every result using it carries (the demo's LoRA standing in)
        self._lora_notes: dict[str, str] = {}
        self._lock = threading.Lock()
        self._fault: BaseException | None = None
        #: torch.compile state: graphs compiled so far (one per image size after warm-up; never per LoRA)
        self.compilations = CompileCounter()
        self.compiled = False
        _, _, self.default_steps, self.default_guidance = MODEL_TYPES[source.model_type]
        users: dict[str, list[str]] = {}
        for task in self.tasks.tasks.values():
            for lora_name, _ in task.loras:
                users.setdefault(lora_name, []).append(task.name)
        for entry in self.tasks.loras.values():
            self._register(entry, users.get(entry.name, []))
        for task in self.tasks.tasks.values():
            if task.loras:
                self._task_adapters[task.name] = self._named[task.loras[0][0]]
                self._apply_lora_trigger_words(task, [self._named[n] for n, _ in task.loras])

    # ---------------------------------------------------------------- construction
    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, model_path: str | Path | None = None,
                      with_tasks: bool = True, default_path_means_demo: bool = False) -> "FluxEngine":
        settings = settings or load_settings()
        tasks = load_task_table(settings.resolved_tasks_file()) if with_tasks else None
        source = resolve_model_source(settings, model_path, default_path_means_demo=default_path_means_demo)
        device, dtype = pick_device(settings)
        check_quantize(settings.quantize, device)
        compile_on = should_compile(settings.compile, device, settings.adapters)
        started = time.perf_counter()
        pipe = load_pipeline(source, device, dtype)
        engine = cls(pipe, source, settings, device, dtype, tasks)
        if compile_on:
            engine.enable_compile()
        logger.info("model ready: %s (%s) on %s/%s, %d task(s), %d adapter(s) resident (%s strategy%s), %.1fs%s",
                    "demo" if source.demo else source.path, source.model_type, device,
                    str(dtype).removeprefix("torch."), len(engine.tasks.tasks), len(engine._resident),
                    engine.adapter_strategy, f", torch.compile {settings.compile_backend}" if compile_on else "",
                    time.perf_counter() - started, "  [DEMO MODEL: random weights]" if source.demo else "")
        return engine

    @property
    def adapter_strategy(self) -> str:
        return getattr(self.adapters, "kind", type(self.adapters).__name__)

    # ---------------------------------------------------------------- torch.compile
    def enable_compile(self) -> None:
        """Compile the transformer (lazily: each image size compiles on its first call; see ``warm_up``)."""
        compile_transformer(self.pipe.transformer, self.settings.compile_backend, self.settings.compile_cache_dir,
                            self.compilations)
        self.compiled = True

    def warmup_sizes(self) -> list[tuple[int, int]]:
        """``FLUX_COMPILE_WARMUP_SIZES``, else every (width, height) of the task table, else 1024x1024."""
        sizes = self.settings.warmup_sizes() or list(dict.fromkeys((t.width, t.height)
                                                                    for t in self.tasks.tasks.values()))
        return sizes or [(1024, 1024)]

    def warm_up(self, sizes: list[tuple[int, int]] | None = None) -> dict[str, float]:
        """Compile every expected image size before the service reports ready: one 1-step call per size
        (latents only, no VAE decode). Returns seconds per size; nothing to do when not compiled."""
        import torch

        if not self.compiled:
            return {}
        done: dict[str, float] = {}
        for width, height in sizes or self.warmup_sizes():
            if width % 16 or height % 16:
                raise ConfigError(f"warm-up size {width}x{height}: width and height must be multiples of 16")
            before, started = self.compilations.total, time.perf_counter()
            with self._lock:
                self.pipe(prompt="warm-up", width=width, height=height, num_inference_steps=1,
                          guidance_scale=self.default_guidance, generator=torch.Generator("cpu").manual_seed(0),
                          max_sequence_length=self.settings.max_sequence_length, output_type="latent")
            done[f"{width}x{height}"] = round(time.perf_counter() - started, 3)
            logger.info("torch.compile warm-up %dx%d: %d graph(s) compiled, %.1fs", width, height,
                        self.compilations.total - before, time.perf_counter() - started)
        return done

    @property
    def is_demo(self) -> bool:
        return self.source.demo

    # ---------------------------------------------------------------- adapters
    @property
    def _demo_root(self) -> Path | None:
        """The demo model's folder (where its own LoRA lives); None on a real model."""
        return self.source.path.parent if self.is_demo else None

    def _register(self, entry: LoraEntry, users: list[str]) -> ResidentAdapter:
        """Make a registered LoRA resident under its name; its path resolves like every LoRA path
        (``lora_paths.locate_lora``: relative to the models folder, the demo's own LoRA standing in on the demo
        model only when the user has no file there, with a warning every result using it carries)."""
        try:
            where = locate_lora(task_lora_path(entry.path, self.settings.models_dir),
                                models_dir=self.settings.models_dir, demo_root=self._demo_root)
            adapter = self._named[entry.name] = self._adapter_for(where.path, name=entry.name)
        except AdapterError as exc:
            who = (f"task {users[0]!r}" if entry.implicit and users else
                   f"LoRA {entry.name!r} ([loras.{entry.name}] in {self.tasks.source})")
            raise type(exc)(f"{who}: {exc.message}", path=exc.path) from None
        if where.note:
            self._lora_notes[entry.name] = where.note
        return adapter

    def _resident_again(self, adapter: ResidentAdapter) -> ResidentAdapter:
        """An adapter unloaded by a Ray replica's LRU is loaded again (same file, same name) when a request
        needs it; every registered name and task pointing at that file follows."""
        if self._resident.get(adapter.file) is adapter:
            return adapter
        fresh = self._resident.get(adapter.file) or self._adapter_for(adapter.file, name=adapter.name)
        for n, a in list(self._named.items()):
            if a.file == adapter.file:
                self._named[n] = fresh
        for t, a in list(self._task_adapters.items()):
            if a.file == adapter.file:
                self._task_adapters[t] = fresh
        return fresh

    def locate_lora(self, path: str | Path) -> tuple[Path, str | None]:
        """Python API paths, resolved like task paths (see ``lora_paths.locate_lora``): (path, warning or None)."""
        where = locate_lora(path, models_dir=self.settings.models_dir, demo_root=self._demo_root)
        return where.path, where.note

    def lora_label(self, file: Path) -> str:
        """A LoRA file as results name it: relative to the models folder, ``demo:...``, never absolute."""
        return display_path(file, models_dir=self.settings.models_dir, demo_root=self._demo_root)

    def _apply_lora_trigger_words(self, task: TaskConfig, adapters: list[ResidentAdapter]) -> None:
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

    def _adapter_for(self, path: Path, name: str | None = None) -> ResidentAdapter:
        """Load a LoRA once; later calls with the same file get the resident adapter (never re-read)."""
        weights = resolve_weights_file(path).resolve()
        if weights in self._resident:
            return self._resident[weights]
        lora = read_lora(weights)
        base = name or (weights.parent.name if weights.name in ("pytorch_lora_weights.safetensors",
                                                                "adapter_model.safetensors") else weights.stem)
        name, n = base, 2
        taken = {a.name for a in self._resident.values()}
        while name in taken:
            name, n = f"{base}_{n}", n + 1
        started = time.perf_counter()
        self.adapters.load(name, lora)
        adapter = ResidentAdapter(name=name, file=weights, format=lora.format, rank=lora.rank,
                                  label=self.lora_label(weights), sha256=lora.sha256,
                                  scales=lora.scale_summary(), components=tuple(lora.components),
                                  dora=lora.is_dora, trigger_words=tuple(lora.trigger_words), alpha=lora.alpha,
                                  modules=tuple(lora.modules))
        self._resident[weights] = adapter
        logger.info("LoRA loaded: %s [sha256 %s] as adapter %r (%s layout%s, %s, rank %d, scale at strength 1: %s, "
                    "%d tensors, %.2fs)", adapter.label, adapter.short_hash, name, lora.format,
                    ", DoRA" if lora.is_dora else "", " + ".join(adapter.components), lora.rank,
                    ", ".join(f"{k} x{v:g}" for k, v in adapter.scales.items()), len(lora.state_dict),
                    time.perf_counter() - started)
        return adapter

    def ensure_adapter(self, file: str | Path) -> ResidentAdapter:
        """Make the LoRA at ``file`` resident (a Ray replica's multiplexer loads a request's LoRA set here)."""
        with self._lock:
            return self._adapter_for(Path(file))

    def unload_adapter(self, file: str | Path) -> bool:
        """Free one resident LoRA so a replica holds at most its N most recently used (app/ray_serve). The
        next request that needs it loads it again from the same file. Needs ``AdapterStrategy.unload``."""
        with self._lock:
            weights = resolve_weights_file(Path(file)).resolve()
            adapter = self._resident.get(weights)
            if adapter is None:
                return False
            self.adapters.unload(adapter.name)  # type: ignore[attr-defined]
            del self._resident[weights]
            logger.info("LoRA unloaded: %s (adapter %r); it loads again when a request needs it",
                        weights, adapter.name)
            return True

    def resident_adapters(self) -> list[ResidentAdapter]:
        return list(self._resident.values())

    # ---------------------------------------------------------------- requests
    def plan(self, req: GenerationRequest) -> Plan:
        """Validate and fill defaults; cheap, touches no tensor (diffusers' ``check_inputs`` idea)."""
        s = self.settings
        if not isinstance(req.prompt, str) or not req.prompt.strip():
            raise InvalidRequest("`prompt` must be a non-empty string", param="prompt")
        if len(req.prompt) > s.max_prompt_chars:
            raise InvalidRequest(f"`prompt` is {len(req.prompt)} characters; the limit is {s.max_prompt_chars}",
                                 param="prompt")
        task = self.tasks.get(req.task) if req.task is not None else None
        notes: list[str] = []
        base: list[tuple[str, ResidentAdapter, float]] = []
        if req.lora_path is not None:
            if task is not None and task.lora:
                raise InvalidRequest(f"task {task.name!r} already has a LoRA; pass either `task` or `lora_path`",
                                     param="lora_path")
            located, note = self.locate_lora(req.lora_path)
            if note:
                notes.append(note)
            adapter = self._adapter_for(located)
            base.append((adapter.name, adapter, 1.0))
        elif task is not None:
            base.extend((n, self._named[n], s) for n, s in task.loras)
        if req.lora_alpha is not None:
            if not base:
                with_lora = [t for t, c in self.tasks.tasks.items() if c.lora]
                where = f"task {task.name!r} uses no LoRA" if task else "no LoRA is in play (no task given)"
                raise InvalidRequest(f"`lora_alpha` was given but {where}, so it would have no effect; drop it, "
                                     f"or pick a task with a LoRA ({', '.join(with_lora) or 'none configured'})",
                                     param="lora_alpha")
            if not MIN_LORA_ALPHA <= req.lora_alpha <= MAX_LORA_ALPHA:
                raise InvalidRequest(f"`lora_alpha` must be between {MIN_LORA_ALPHA} and {MAX_LORA_ALPHA}, "
                                     f"got {req.lora_alpha}", param="lora_alpha")
        loras = plan_loras(registry=self._named, base=base, task_name=task.name if task else None,
                           lora_alpha=req.lora_alpha, requested=getattr(req, "loras", None))
        loras = tuple(replace(x, adapter=self._resident_again(x.adapter)) for x in loras)
        notes.extend(self._lora_notes[x.name] for x in loras if x.name in self._lora_notes)
        adapter = loras[0].adapter if loras else None
        scale = loras[0].scale if loras else 0.0
        width = req.width if req.width is not None else (task.width if task else 1024)
        height = req.height if req.height is not None else (task.height if task else 1024)
        for name, value in (("width", width), ("height", height)):
            if value % 16:
                raise InvalidRequest(f"`{name}` must be a multiple of 16, got {value}", param=name)
            if not s.min_size <= value <= s.max_size:
                raise InvalidRequest(f"`{name}` must be between {s.min_size} and {s.max_size}, got {value}",
                                     param=name)
        steps = req.num_inference_steps
        if steps is None:  # not `or`: 0 steps is an error to report, not a request for the default
            steps = (task.num_inference_steps if task else None) or self.default_steps
        if not 1 <= steps <= s.max_steps:
            raise InvalidRequest(f"`num_inference_steps` must be between 1 and {s.max_steps}, got {steps}",
                                 param="num_inference_steps")
        guidance = req.guidance_scale
        if guidance is None:
            guidance = task.guidance_scale if task and task.guidance_scale is not None else self.default_guidance
        if not 0.0 <= guidance <= MAX_GUIDANCE:
            raise InvalidRequest(f"`guidance_scale` must be between 0 and {MAX_GUIDANCE}, got {guidance}",
                                 param="guidance_scale")
        seed = req.seed if req.seed is not None else secrets.randbelow(2**32)
        if not 0 <= seed <= MAX_SEED:
            raise InvalidRequest(f"`seed` must be between 0 and {MAX_SEED}, got {seed}", param="seed")
        mode = req.translate if req.translate is not None else s.translate
        if mode not in TRANSLATE_MODES:
            raise InvalidRequest(f"`translate` must be one of {', '.join(TRANSLATE_MODES)}, got {mode!r}",
                                 param="translate")
        # the prompt stage runs first; trigger words and the template are added to its English, untranslated
        staged = self.prompt_stage.apply(req.prompt, mode)
        prompt = task.render_prompt(staged.english) if task else staged.english
        as_typed = task.render_prompt(req.prompt) if task else req.prompt
        return Plan(prompt=prompt, task=task.name if task else None, adapter=adapter, lora_scale=scale if adapter else 0.0,
                    width=width, height=height, num_inference_steps=steps, guidance_scale=float(guidance),
                    seed=seed, notes=tuple(notes) + staged.notes, staged=staged, prompt_as_typed=as_typed,
                    loras=loras)

    def generate(self, req: GenerationRequest, progress: ProgressCallback | None = None,
                 preview: Previewer | None = None) -> GenerationResult:
        """Make one image. ``progress(step, total)`` may raise Cancelled/DeadlineExceeded to stop it.

        ``preview`` (optional, see ``pipelines/preview.py``): after each step where ``preview.wants(step,
        total)``, the latents are turned into a small picture and passed to ``preview.show``. Without it no
        preview is ever computed. It runs after ``progress`` for the same step.
        """
        import torch

        with self._lock:
            plan = self.plan(req)
            report = check_prompt(self.pipe.tokenizer, self.pipe.tokenizer_2, plan.prompt,
                                  self.settings.max_sequence_length)
            warnings = list(plan.notes) + report.warnings
            unknown_before = report.t5_unknown_fraction
            if plan.prompt_as_typed != plan.prompt:
                unknown_before = check_prompt(self.pipe.tokenizer, self.pipe.tokenizer_2, plan.prompt_as_typed,
                                              self.settings.max_sequence_length).t5_unknown_fraction
            for note in plan.staged.notes:
                logger.warning("prompt: %s", note)
            if self.is_demo:
                warnings.append("demo model: random weights, noise-like picture; set FLUX_MODEL_PATH for real images")
            for w in report.warnings:
                logger.warning("prompt: %s", w)
            total = plan.num_inference_steps
            marks: list[float] = []
            preview_broken: list[bool] = []
            started = time.perf_counter()

            def on_step_end(_pipe, i, _t, kwargs):
                marks.append(time.perf_counter())
                if self._fault is not None:
                    fault, self._fault = self._fault, None
                    raise fault
                if progress is not None:
                    progress(i + 1, total)
                if preview is not None and not preview_broken and preview.wants(i + 1, total):
                    try:
                        picture = preview_image(kwargs["latents"], plan.height, plan.width, self.pipe.vae_scale_factor)
                    except Exception:  # noqa: BLE001 - a preview must never cost the image; said in the log
                        logger.exception("live preview failed at step %d; no more previews for this image", i + 1)
                        preview_broken.append(True)
                    else:
                        preview.show(Preview(i + 1, total, picture))
                return {}

            if progress is not None:
                progress(0, total)
            self.adapters.activate_set([(x.adapter.name, x.scale) for x in plan.loras])
            compilations_before = self.compilations.total
            try:
                out = self.pipe(
                    prompt=plan.prompt,
                    width=plan.width,
                    height=plan.height,
                    num_inference_steps=total,
                    guidance_scale=plan.guidance_scale,
                    generator=torch.Generator(device="cpu").manual_seed(plan.seed),
                    max_sequence_length=self.settings.max_sequence_length,
                    callback_on_step_end=on_step_end,
                    callback_on_step_end_tensor_inputs=["latents"],
                )
            except torch.OutOfMemoryError as exc:
                del exc
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                logger.error("out of memory generating %dx%d (%d steps); memory released",
                             plan.width, plan.height, total)
                raise OutOfMemory(f"the GPU ran out of memory for a {plan.width}x{plan.height} image; memory was "
                                  "released, try a smaller size or retry later") from None
            image = out.images[0]
            ended = time.perf_counter()
            compiled_now = self.compilations.total - compilations_before
        if compiled_now:
            logger.warning("torch.compile: this %dx%d image compiled %d new graph(s) (a size not warmed up; add it "
                           "to FLUX_COMPILE_WARMUP_SIZES)", plan.width, plan.height, compiled_now)

        timings = {"total_s": round(ended - started, 4)}
        if marks:
            step_mean = (marks[-1] - marks[0]) / (len(marks) - 1) if len(marks) > 1 else marks[0] - started
            timings.update(step_mean_s=round(step_mean, 4), decode_s=round(ended - marks[-1], 4),
                           encode_s=round(max(marks[0] - started - step_mean, 0.0), 4))
        info = GenerationInfo(
            task=plan.task,
            adapter_name=plan.adapter.name if plan.adapter else None,
            adapter_file=plan.adapter.label if plan.adapter else None,
            lora_scale=plan.lora_scale,
            seed=plan.seed,
            width=plan.width,
            height=plan.height,
            num_inference_steps=total,
            guidance_scale=plan.guidance_scale,
            prompt=plan.prompt,
            model=self.source.label,
            model_type=self.source.model_type,
            demo=self.is_demo,
            device=self.device,
            dtype=str(self.dtype).removeprefix("torch."),
            warnings=warnings,
            timings=timings,
            adapter_hash=plan.adapter.short_hash if plan.adapter else None,
            adapter_rank=plan.adapter.rank if plan.adapter else None,
            adapter_scales=dict(plan.adapter.scales) if plan.adapter else None,
            loras=[x.to_dict() for x in plan.loras],
            adapter_strategy=self.adapter_strategy,
            compiled=self.compiled,
            compilations=self.compilations.total,
            translate=plan.staged.mode,
            prompt_original=plan.staged.original,
            prompt_english=plan.staged.english,
            glossary_terms=[list(t) for t in plan.staged.glossary_terms],
            translated=[list(t) for t in plan.staged.translated],
            translator=plan.staged.translator,
            prompt_clip=report.clip_text,
            prompt_t5=report.t5_text,
            t5_unknown_before=round(unknown_before, 4),
            t5_unknown_after=round(report.t5_unknown_fraction, 4),
        )
        lora = (f"{info.adapter_file} [sha256 {info.adapter_hash}] (adapter={info.adapter_name}, "
                f"alpha={info.lora_scale:g})"
                if info.adapter_name and info.lora_scale else
                f"off (alpha=0 for {info.adapter_file})" if info.adapter_name else "no LoRA")
        if len(plan.loras) > 1:
            lora = ", ".join(f"{x.name}={x.scale:g}" for x in plan.loras)
        logger.info("generated task=%s LoRA: %s seed=%d size=%dx%d steps=%d guidance=%g time=%.2fs%s",
                    info.task or "-", lora, info.seed, info.width, info.height, total, info.guidance_scale,
                    timings["total_s"], "  [DEMO MODEL]" if self.is_demo else "")
        return GenerationResult(image=image, info=info)

    def add_task(self, task: TaskConfig, registry: dict[str, LoraEntry] | None = None) -> None:
        """Serve a new task without a restart (a LoRA just trained by ``flux-service train --task``): its
        LoRAs are loaded now, between two generations (under the lock), like a start-up task's. ``registry``:
        the ``[loras.NAME]`` entries of the table the task was read from (names this engine does not know yet)."""
        if task.name in self.tasks.tasks:
            raise InvalidRequest(f"task {task.name!r} is already served", param="task")
        registry = registry or {}
        with self._lock:
            for n, _ in task.loras:
                entry, known = registry.get(n), self.tasks.loras.get(n)
                if known is not None and (entry is None or entry.path == known.path):
                    continue
                if known is not None or entry is None:
                    raise ConfigError(f"task {task.name!r}: LoRA {n!r} "
                                      + ("now names another file than at start-up" if entry else "is not registered")
                                      + f" in {self.tasks.source}; restart the service to serve it")
                self._register(entry, [task.name])
                self.tasks.loras[n] = entry
            self.tasks.tasks[task.name] = task
            if task.loras:
                self._task_adapters[task.name] = self._named[task.loras[0][0]]
                self._apply_lora_trigger_words(task, [self._named[n] for n, _ in task.loras])
        adapter = self._task_adapters.get(task.name)
        logger.info("task %s added at run time (LoRA %s)", task.name, adapter.label if adapter else "none")

    # ---------------------------------------------------------------- introspection
    def task_infos(self) -> list[TaskInfo]:
        out = []
        for t in self.tasks.tasks.values():
            adapter = self._task_adapters.get(t.name)
            out.append(TaskInfo(
                name=t.name, description=t.description,
                adapter_name=adapter.name if adapter else None,
                adapter_file=adapter.label if adapter else None,
                lora_alpha=t.lora_alpha if adapter else 0.0,
                trigger_words=list(t.trigger_words), prompt_template=t.prompt_template,
                width=t.width, height=t.height,
                num_inference_steps=t.num_inference_steps or self.default_steps,
                guidance_scale=t.guidance_scale if t.guidance_scale is not None else self.default_guidance,
                adapter_hash=adapter.short_hash if adapter else None,
                lora_trigger_words=list(dict.fromkeys(w for n, _ in t.loras for w in self._named[n].trigger_words)),
                warnings=[self._lora_notes[n] for n, _ in t.loras if n in self._lora_notes],
                loras=[{"name": n, "scale": s} for n, s in t.loras],
            ))
        return out

    def lora_infos(self) -> list[dict]:
        """Every registered LoRA as clients see it (``GET /api/loras``): no absolute paths."""
        return describe_loras(self._named, self.tasks)

    def inject_fault_once(self, fault: BaseException) -> None:
        """Test hook: raise ``fault`` from inside the next denoising step (e.g. a torch.OutOfMemoryError)."""
        self._fault = fault
