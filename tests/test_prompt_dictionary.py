"""The dictionary stage (jieba + CC-CEDICT, issue 20): one short English sense per word, the grammar table,
glossary terms never matched inside a longer dictionary word, and a deterministic compact index."""

from __future__ import annotations

import pytest

from pipelines.errors import ConfigError
from pipelines.prompt import cedict_index
from pipelines.prompt.dictionary import Dictionary
from pipelines.prompt.wording import chinese_number, gerund, plural
from pipelines.settings import Settings


@pytest.fixture(scope="module")
def dictionary() -> Dictionary:
    return Dictionary(Settings(_env_file=None).dictionary_cache_dir)


def english(d: Dictionary, text: str) -> str:
    return d.render(text, []).english


@pytest.mark.parametrize("text, expected", [
    ("一只猫", "a cat"),  # measure word: an article, no "one only"
    ("三只海豚", "three dolphins"),  # a number makes the noun plural
    ("一群蜜蜂", "a group of bees"),
    ("一块水晶", "a crystal"),  # 一块 is one CC-CEDICT word ("one block"): still a numeral and a measure word
    ("猫坐在桌子上", "cat sitting on table"),  # 在 and the place word: "on table", the verb an -ing form
    ("冰川正在融化", "glacier melting"),  # 正在 needs no English
    ("学生们", "students"),
    ("火山口旁边", "beside volcanic crater"),
])
def test_words_numbers_and_places(dictionary, text, expected):
    assert english(dictionary, text) == expected


def test_numbers_and_latin_text_are_kept_as_typed(dictionary):
    assert english(dictionary, "DNA模型 4K") == "DNA model 4K"
    assert english(dictionary, "3只企鹅") == "3 penguins"


def test_every_word_is_recorded_with_its_stage_and_function_words_as_dropped(dictionary):
    rendered = dictionary.render("一只猫的尾巴", [])
    assert rendered.words == (("一只", "a", "dictionary"), ("猫", "cat", "dictionary"), ("的", "", "dictionary"),
                              ("尾巴", "tail", "dictionary"))
    assert rendered.english == "a cat tail" and rendered.left == ()


def test_a_glossary_term_never_matches_inside_a_longer_dictionary_word(dictionary):
    text = "桌上有地球仪和望远镜"
    inside = dictionary.protected(text)
    start = text.index("地球仪")
    assert {start + 1, start + 2} <= inside  # 地球|仪 would cut the word 地球仪: 地球 cannot match there
    assert text.index("望远镜") not in inside and text.index("望远镜") + 3 not in inside


def test_each_word_is_looked_up_once(dictionary):
    dictionary.english.cache_clear()
    dictionary.render("鲨鱼和鲨鱼", [])
    info = dictionary.english.cache_info()
    assert (info.misses, info.hits) == (2, 1)  # 鲨鱼, 和; then 鲨鱼 from the cache


def test_the_compact_index_is_built_deterministically(dictionary, tmp_path):
    dictionary.load()
    sources = cedict_index.find_sources()
    cached = cedict_index.index_root(dictionary.cache_dir, sources)
    cedict_index.build_index(tmp_path, sources)
    for name in ("senses.pickle", "jieba_dict.txt"):
        assert (tmp_path / name).read_bytes() == (cached / name).read_bytes(), name
    assert "CC BY-SA 4.0" in (tmp_path / "SOURCES.txt").read_text(encoding="utf-8")


def test_an_unwritable_cache_dir_is_a_config_error_naming_the_setting(tmp_path):
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    with pytest.raises(ConfigError, match="FLUX_DICTIONARY_CACHE_DIR"):
        Dictionary(blocked / "cache").load()


def test_sense_rules():
    entries = [("Huo3 xing1", ["Mars (planet)"])]
    assert cedict_index.choose_sense("火星", entries, "n") == ("Mars", "n")  # a proper noun when nothing else
    stand = [("zhan4", ["station", "to stand", "to halt"])]
    assert cedict_index.choose_sense("站", stand, "v") == ("stand", "v")  # jieba says verb: "to " stripped
    assert cedict_index.choose_sense("站", stand, "n") == ("station", "n")  # otherwise nouns first
    assert cedict_index.clean_sense("(astronomy) black hole") == "black hole"
    assert cedict_index.clean_sense("to take (a picture)") == "to take a picture"


def test_word_forms():
    assert [gerund(v) for v in ("stand", "sit", "melt", "make", "lie", "look at", "control")] == [
        "standing", "sitting", "melting", "making", "lying", "looking at", "controlling"]
    assert [plural(n) for n in ("dolphin", "box", "butterfly", "fish", "volcanic crater", "man")] == [
        "dolphins", "boxes", "butterflies", "fish", "volcanic craters", "men"]
    assert [chinese_number(w) for w in ("一", "两", "十二", "三百五十", "12", "猫")] == [1, 2, 12, 350, 12, None]
