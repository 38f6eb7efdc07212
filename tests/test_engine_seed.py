"""Reproducibility: every call has a seed, and a seed gives the same pixels."""

from __future__ import annotations

import numpy as np

from tests.engine_helpers import pixels, request


def test_same_seed_gives_same_pixels(engine):
    a = engine.generate(request(task="host_face", seed=7))
    b = engine.generate(request(task="host_face", seed=7))
    assert np.array_equal(pixels(a), pixels(b))


def test_different_seeds_give_different_pixels(engine):
    a = engine.generate(request(seed=7))
    b = engine.generate(request(seed=8))
    assert not np.array_equal(pixels(a), pixels(b))


def test_missing_seed_is_chosen_reported_and_reproduces_the_image(engine):
    first = engine.generate(request(task="host_face", seed=None))
    assert isinstance(first.info.seed, int) and first.info.seed >= 0
    again = engine.generate(request(task="host_face", seed=first.info.seed))
    assert np.array_equal(pixels(first), pixels(again))


def test_seed_zero_is_a_seed_not_a_missing_one(engine):
    assert engine.generate(request(seed=0)).info.seed == 0
