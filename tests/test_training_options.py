"""One set of rules for what a training may be asked (``training/options.py``), shared by ``flux-service
train`` and ``POST /api/trainings``: every value is refused before anything is queued or loaded, naming the
field (issue 17 items 2, 4, 5, 13). Fast: no model is loaded."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from training import TrainingConfigError
from training.options import parse_options

OK = {"name": "anna", "trigger": "ohwx woman"}


@pytest.mark.parametrize("field, value", [
    ("trigger", "ohwx\0woman"),  # issue 17 item 2: queued, then blocked the queue forever
    ("task", "anna\0face"),
    ("name", "anna\n"),  # item 13: made a folder `anna\n`
    ("name", "../x"),
    ("task", "a/b"), ("task", "../x"), ("task", "主持人"), ("task", "x" * 100), ("task", "anna face"),
    ("task", "--overwrite-task"),  # item 5: read by the trainer as an option
    ("trigger", "--resume"),
    ("trigger", "ohwx\nwoman"), ("trigger", " ohwx"), ("trigger", ""),
    ("strength", "5"), ("strength", "nan"), ("strength", "inf"), ("strength", "-0.5"),  # item 4: NaN was queued
    ("resolution", "abc"), ("resolution", "64,"), ("resolution", ""), ("resolution", "64,,128"),  # item 4: 500s
    ("steps", "abc"), ("steps", "1.5"), ("steps", "0"), ("rank", "nan"), ("lr", "nan"), ("alpha", "inf"),
    ("seed", "-1"), ("overwrite_task", "maybe"), ("skip_bad", "2"),
])
def test_every_bad_value_is_refused_naming_its_field(field, value):
    values = {**OK, field: value}
    if field == "resolution" and value == "":
        values[field] = ","  # an empty form field means "not given"; a lone comma is a value
    with pytest.raises(TrainingConfigError) as err:
        parse_options(values)
    assert err.value.param == field, err.value.message
    assert field in err.value.message


def test_unknown_and_missing_fields_are_named():
    with pytest.raises(TrainingConfigError) as err:
        parse_options({**OK, "step": "10"})  # a typo is not silently ignored
    assert err.value.param == "step"
    with pytest.raises(TrainingConfigError) as err:
        parse_options({"name": "anna"})
    assert err.value.param == "trigger"


def test_text_values_are_parsed_like_the_command_line():
    o = parse_options({**OK, "task": "anna_face", "strength": "0.8", "steps": "12", "rank": "8", "lr": "1e-3",
                       "resolution": "512, 768", "seed": "3", "overwrite_task": "true", "skip_bad": "on",
                       "alpha": "", "caption_dropout": None})
    assert (o.task, o.strength, o.steps, o.rank, o.lr, o.resolutions, o.seed) == \
        ("anna_face", 0.8, 12, 8, 1e-3, (512, 768), 3)
    assert o.overwrite_task and o.skip_bad and not o.overwrite and o.alpha is None
    assert o.config(demo=True).alpha == 8.0  # alpha defaults to rank


def test_trainer_arguments_cannot_be_read_as_options():
    """The supervisor passes each value as ``--option=value`` and the photos after ``--``: a value that looks
    like an option (allowed for the photos' folder name, refused for names) stays a value."""
    from cli.main import build_parser

    o = parse_options({**OK, "trigger": "ohwx -x", "task": "anna_face", "strength": "0.5", "resolution": "64"})
    args = build_parser().parse_args(["train", *o.cli_args(), "--", "--resume"])
    assert (args.photos, args.name, args.trigger, args.task) == ("--resume", "anna", "ohwx -x", "anna_face")
    assert not args.resume and not args.overwrite_task
    assert parse_options({k: getattr(args, k) for k in ("name", "trigger", "task", "strength", "resolution")}) == \
        parse_options({**OK, "trigger": "ohwx -x", "task": "anna_face", "strength": "0.5", "resolution": "64"})


def test_cli_applies_the_same_rules_before_loading_a_model(tmp_path):
    env = {**os.environ, "FLUX_MODELS_DIR": str(tmp_path / "models")}
    for argv, field in ((["--name", "anna\n", "--trigger", "ohwx"], "name"),
                        (["--name", "anna", "--trigger", "ohwx", "--task=../x"], "task"),
                        (["--name", "anna", "--trigger", "ohwx", "--strength", "nan"], "strength")):
        out = subprocess.run([sys.executable, "-m", "cli", "train", str(tmp_path), *argv], capture_output=True,
                             text=True, timeout=120, env=env)
        assert out.returncode == 2, out.stderr
        assert "error (invalid_training_config)" in out.stderr and f"`{field}`" in out.stderr, out.stderr
    assert not (tmp_path / "models").exists()
