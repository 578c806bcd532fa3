"""The shapes world and its pixel judge (the training data and the prompt-adherence metric).

The judge is checked on ground-truth images: a judge that is wrong on perfect images would make any
adherence number meaningless.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ray_dit.demo import shapes_world as world
from ray_dit.demo.judge import judge, parse_prompt


def test_world_is_deterministic_and_captions_parse():
    a = world.dataset(6, seed=3)
    b = world.dataset(6, seed=3)
    for x, y in zip(a, b, strict=True):
        assert x.combo == y.combo
        np.testing.assert_array_equal(x.image, y.image)
        assert parse_prompt(x.combo.caption) == x.combo
    with pytest.raises(ValueError, match="not of the form"):
        parse_prompt("a cat")


def test_held_out_pairs_are_never_trained_but_their_reverses_are():
    trained = {(c.fg, c.bg) for c in world.train_combos()}
    held = world.held_out_pairs()
    assert len(held) == len(world.COLOR_NAMES)
    assert not trained & held
    assert all((bg, fg) in trained for fg, bg in held)


def test_judge_is_right_on_ground_truth_images():
    samples = world.dataset(300, seed=11, combos=world.all_combos())
    wrong = [
        (s.combo, judge(s.image, s.combo).reading) for s in samples if not judge(s.image, s.combo).all_ok
    ]
    assert wrong == []


def test_judge_flags_swapped_colors_and_blank_images():
    sample = world.sample(world.Combo("red", "circle", "blue"), np.random.default_rng(0))
    swapped = judge(sample.image, "a blue circle on a red background")
    assert swapped.swapped and not swapped.bg_ok and not swapped.fg_ok and swapped.shape_ok
    blank = np.full((64, 64, 3), world.COLORS["green"], dtype=np.uint8)
    verdict = judge(blank, "a red square on a green background")
    assert verdict.bg_ok and not verdict.fg_ok and not verdict.shape_ok


def test_every_trained_caption_is_in_the_vocabulary_and_grammar():
    from ray_dit.demo.shapes_world import all_combos, partial_captions, prompt_warnings

    for combo in all_combos():
        for caption in (combo.caption, *partial_captions(combo)):
            assert prompt_warnings(caption) == [], caption
            assert prompt_warnings(caption.upper() + ".") == [], caption


@settings(max_examples=100, deadline=None)
@given(st.sampled_from(["cat", "pink", "beautiful", "highly", "dog", "photo"]), st.integers(0, 8))
def test_an_unknown_word_anywhere_is_named(word, at):
    from ray_dit.demo.shapes_world import prompt_warnings

    words = ["a", "red", "circle", "on", "a", "blue", "background"]
    words.insert(min(at, len(words)), word)
    (warning,) = prompt_warnings(" ".join(words))
    assert warning.startswith(f"unknown word {word!r}: demo:shapes draws")


def test_known_words_out_of_the_trained_form_warn():
    from ray_dit.demo.shapes_world import prompt_warnings

    (warning,) = prompt_warnings("background red on a circle")
    assert warning.startswith("the prompt is not in the trained form")
