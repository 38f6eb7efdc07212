"""Training options and their two presets: production values on a GPU, a seconds-long run on the demo model.

Why these numbers: they are what the trainers our users' peers rely on agree on (diffusers'
``train_dreambooth_lora_flux.py``, ai-toolkit, kohya, Replicate's flux-fine-tuner): rank 16 with
alpha = rank, about 1000 steps at lr 1e-4, batch 1, 512/768/1024 buckets, caption dropout 0.05, guidance 1
during training, bf16 with gradient checkpointing. The demo preset trains the tiny random-weight demo
model at 64 px with a larger learning rate, so the whole loop runs for real on a CPU in seconds.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace

from training.errors import TrainingConfigError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

#: transformer linear layers the LoRA adapts (attention, feed-forward of both streams, single blocks),
#: the set diffusers' FLUX trainer and ai-toolkit use
TARGET_MODULES = (
    "attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0",
    "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj", "attn.to_add_out",
    "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
    "proj_mlp", "proj_out",
)
SAMPLE_PROMPTS = ("{trigger}, portrait photo, studio background", "{trigger}, smiling, outdoor, natural light")
SAMPLE_SEEDS = (42, 7)


@dataclass(frozen=True)
class TrainConfig:
    name: str
    trigger: str
    steps: int = 1000
    rank: int = 16
    alpha: float = 16.0
    lr: float = 1e-4
    resolutions: tuple[int, ...] = (512, 768, 1024)
    seed: int = 0
    caption_dropout: float = 0.05
    checkpoint_every: int = 250
    max_grad_norm: float = 1.0
    min_images: int = 4
    min_side: int = 256
    sample_prompts: tuple[str, ...] = SAMPLE_PROMPTS
    sample_seeds: tuple[int, ...] = SAMPLE_SEEDS
    sample_size: int = 1024
    sample_steps: int = 28
    gradient_checkpointing: bool | None = None  # None: on for CUDA, off on CPU (no memory to save there)
    preset: str = "gpu"
    extra: dict = field(default_factory=dict)

    def validate(self) -> "TrainConfig":
        def bad(param: str, msg: str):
            raise TrainingConfigError(msg, param=param)

        if not NAME_RE.match(self.name):
            bad("name", f"`name` {self.name!r} must be 1-64 letters, digits, '_' or '-' (it names a folder and a task)")
        if not self.trigger.strip() or len(self.trigger) > 64 or any(c in self.trigger for c in ",\n\"\\"):
            bad("trigger", "`trigger` must be a short word or phrase (1-64 characters, no comma, quote or "
                "backslash), ideally a rare token such as 'ohwx person'")
        if not 1 <= self.steps <= 100_000:
            bad("steps", f"`steps` must be between 1 and 100000, got {self.steps}")
        if not 1 <= self.rank <= 256:
            bad("rank", f"`rank` must be between 1 and 256, got {self.rank}")
        if not 0 < self.alpha <= 1024:
            bad("alpha", f"`alpha` must be in (0, 1024], got {self.alpha}")
        if not 0 < self.lr <= 1e-2:
            bad("lr", f"`lr` must be in (0, 0.01], got {self.lr}")
        if not self.resolutions or any(r % 16 or not 32 <= r <= 2048 for r in self.resolutions):
            bad("resolution", f"`resolution` values must be multiples of 16 between 32 and 2048, got {list(self.resolutions)}")
        if not 0 <= self.caption_dropout < 1:
            bad("caption_dropout", f"`caption_dropout` must be in [0, 1), got {self.caption_dropout}")
        if not 0 <= self.seed < 2**63:
            bad("seed", f"`seed` must be between 0 and 2**63-1, got {self.seed}")
        if self.checkpoint_every < 1:
            bad("checkpoint_every", "`checkpoint_every` must be at least 1")
        return self

    def fingerprint(self) -> str:
        """What must match for ``--resume`` to continue a run (everything that changes the result)."""
        d = asdict(self)
        d.pop("extra")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resolutions"] = list(self.resolutions)
        d["sample_prompts"] = [p.format(trigger=self.trigger) for p in self.sample_prompts]
        d["sample_seeds"] = list(self.sample_seeds)
        return d


def preset(name: str, trigger: str, *, demo: bool, **overrides) -> TrainConfig:
    """The defaults for this model (demo: seconds on a CPU; else production), then the user's options."""
    base = TrainConfig(name=name, trigger=trigger)
    if demo:
        base = replace(base, steps=80, rank=4, alpha=4.0, lr=1e-2, resolutions=(64,), checkpoint_every=40,
                       min_side=32, sample_size=64, sample_steps=2, preset="demo")
    given = {k: v for k, v in overrides.items() if v is not None}
    if "resolutions" in given:
        given["resolutions"] = tuple(given["resolutions"])
    return replace(base, **given).validate()
