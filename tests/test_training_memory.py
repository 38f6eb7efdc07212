"""The trainer's GPU memory (issue 18, item 4): T5 and the transformer never share the GPU, and the admission of
a training counts the fused backup the serving engine adds for the LoRA a registered task will serve."""

from __future__ import annotations

import types

import pytest

from pipelines.errors import Overloaded
from tests.conftest import make_settings
from tests.engine_helpers import fresh_bare_pipe

GIB = 1024**3


def test_text_encoders_are_freed_before_the_transformer_moves(engine):
    """The real demo pipeline, each component's ``.to`` recorded: encoders and VAE first, encode, encoders
    dropped, then the transformer."""
    from training.data_cache import encode_before_training

    pipe = fresh_bare_pipe(engine)
    events = []
    for name in ("text_encoder", "text_encoder_2", "vae", "transformer"):
        module = getattr(pipe, name)
        module.to = (lambda original, n: lambda *a, **k: (events.append((n, pipe.text_encoder is None)),
                                                          original(*a, **k))[1])(module.to, name)

    def encode():
        events.append(("encode", pipe.text_encoder is None))
        return "cached"

    assert encode_before_training(pipe, "cpu", encode) == "cached"
    assert events == [("text_encoder", False), ("text_encoder_2", False), ("vae", False), ("encode", False),
                      ("transformer", True)]
    assert pipe.text_encoder is None and pipe.text_encoder_2 is None


def _runs(tmp_path, free_gib: float, backup_gib: float):
    from training.runs import TrainingRuns

    return TrainingRuns(make_settings(trainings_dir=tmp_path), demo=False, device="cuda",
                        free_memory=lambda: int(free_gib * GIB), backup_need=lambda: int(backup_gib * GIB))


def test_admission_counts_the_fused_backup_of_the_lora_a_task_will_serve(tmp_path):
    runs = _runs(tmp_path, free_gib=35, backup_gib=16)
    runs.admit(registers_task=False)  # 35 GiB free >= 30 for the training alone
    with pytest.raises(Overloaded, match=r"35\.0 GiB free, 30 GiB needed for the training .* \+ 16\.0 GiB for the "
                                         r"fused backup"):
        runs.admit(registers_task=True)
    _runs(tmp_path, free_gib=47, backup_gib=16).admit(registers_task=True)


def test_backup_need_is_the_trainer_targets_not_backed_up_yet():
    """On FLUX.1-dev's architecture (meta device): 16 GiB for a first trained LoRA; a resident attention +
    feed-forward LoRA already backs up most of those weights; FLUX_FUSED_BACKUP=cpu needs no GPU memory."""
    import torch

    from bench.flux_arch import FULL, build_components, random_lora
    from bench.flux_memory import backup_figures
    from pipelines.lora.fused_adapters import FusedAdapters
    from training.runs import served_lora_backup_bytes

    transformer = build_components(FULL, "meta", torch.bfloat16)["transformer"]
    pipe = types.SimpleNamespace(transformer=transformer)
    adapters = FusedAdapters(pipe)
    engine = types.SimpleNamespace(adapters=adapters, pipe=pipe)
    trainer = backup_figures(transformer, "trainer", 16)["backup_bytes"]
    assert served_lora_backup_bytes(engine) == trainer and round(trainer / GIB) == 16
    adapters.load("style", random_lora(transformer, 16, seed=1, which="attn+ff"))
    resident = backup_figures(transformer, "attn+ff", 16)["backup_bytes"]
    assert served_lora_backup_bytes(engine) == trainer - resident
    assert served_lora_backup_bytes(types.SimpleNamespace(adapters=FusedAdapters(pipe, backup="cpu"), pipe=pipe)) == 0
