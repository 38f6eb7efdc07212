"""The small pieces of Chinese grammar and English morphology the dictionary stage needs to write a prompt.

Why a table and not a model: an image prompt is a list of noun phrases with a few verbs and places
("主持人站在火山口旁边"). Word-by-word English reads well enough for T5 once four things are handled:
function words that English does not need (的/了/着/在/很 ...) are dropped; a numeral and its measure word
become an article or a number and make the noun plural (一只猫 -> "a cat", 三只海豚 -> "three dolphins");
a place word that follows its noun in Chinese goes before it in English (火山口旁边 -> "beside volcanic
crater"); and a verb is written as an -ing form, as captions are ("standing"). Everything here is general
grammar, not tuned to any prompt list.
"""

from __future__ import annotations

import re

#: words English needs no counterpart for, in an image prompt: dropped (recorded with English "")
FUNCTION_WORDS = frozenset(
    "的 地 得 了 着 过 是 很 把 被 将 正在 正 之 所 吧 呢 啊 吗 呀 啦 哦 嘛 都 就 还 又 才 则 便 也 然后 已经 已 "
    "一下 一直".split())

#: words whose English the table fixes (conjunctions, prepositions, quantities, demonstratives)
FIXED_WORDS = {
    "和": "and", "与": "and", "及": "and", "以及": "and", "跟": "and", "并且": "and", "并": "and", "而": "and",
    "或": "or", "或者": "or", "有": "with", "没有": "without", "从": "from", "向": "towards", "朝": "towards",
    "往": "towards", "用": "using", "给": "for", "为": "for", "这": "this", "那": "that",
    "这个": "this", "那个": "that", "一些": "some", "这些": "these", "那些": "those", "许多": "many",
    "很多": "many", "众多": "many", "好多": "many", "各种": "various", "每": "every", "每个": "every",
    "非常": "very", "十分": "very", "特别": "especially", "正在进行": "ongoing",
}
#: quantity words after which the next noun is plural
PLURAL_WORDS = frozenset("一些 这些 那些 许多 很多 众多 好多 各种 几".split())

#: place words that follow their noun in Chinese and come before it in English
POSTPOSITIONS = {
    "上": "on", "上面": "on", "上方": "above", "上空": "above", "顶上": "on top of", "下": "under",
    "下面": "under", "下方": "below", "底下": "under", "里": "in", "里面": "inside", "内": "inside",
    "中": "in", "之中": "among", "当中": "among", "旁": "beside", "旁边": "beside", "边": "beside",
    "边上": "beside", "身边": "beside", "一旁": "beside", "前": "in front of", "前面": "in front of",
    "前方": "in front of", "后": "behind", "后面": "behind", "后方": "behind", "身后": "behind",
    "背后": "behind", "外": "outside", "外面": "outside", "附近": "near", "周围": "around", "四周": "around",
    "之间": "between", "中间": "in the middle of", "对面": "opposite", "深处": "deep in", "之上": "above",
    "之下": "below", "表面": "on the surface of",
}

#: measure words: dropped after a numeral (一只猫 -> "a cat"), except those that say something in English
CLASSIFIERS = frozenset(
    "个 只 条 张 位 本 台 头 把 件 座 棵 朵 块 辆 架 根 支 颗 粒 匹 艘 间 所 家 层 道 幅 枚 盏 面 尊 株 "
    "名 部 扇 顶 口 尾 片 种 群 堆 串 排 杯 瓶 滴 束 双 对 套 副 份 箱 盒 包 袋 碗 盘 次 圈".split())
CLASSIFIER_WORDS = {"群": "group of", "堆": "pile of", "串": "string of", "排": "row of", "杯": "cup of",
                    "瓶": "bottle of", "滴": "drop of", "束": "bunch of", "双": "pair of", "对": "pair of",
                    "套": "set of", "箱": "box of", "盒": "box of", "包": "pack of", "袋": "bag of",
                    "碗": "bowl of", "盘": "plate of", "圈": "ring of"}

_DIGITS = {"零": 0, "〇": 0, "一": 1, "二": 2, "两": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8,
           "九": 9}
_UNITS = {"十": 10, "百": 100, "千": 1000, "万": 10000}
_ENGLISH_NUMBERS = "zero one two three four five six seven eight nine ten".split()

_IRREGULAR_PLURALS = {"man": "men", "woman": "women", "child": "children", "person": "people", "mouse": "mice",
                      "tooth": "teeth", "foot": "feet", "goose": "geese", "leaf": "leaves", "fish": "fish",
                      "sheep": "sheep", "deer": "deer", "series": "series", "species": "species",
                      "bacterium": "bacteria", "cactus": "cacti", "knife": "knives", "wolf": "wolves",
                      "shelf": "shelves", "life": "lives", "calf": "calves", "half": "halves"}
_UNCOUNTABLE = frozenset("water ice light sunlight smoke fog magma lava sand snow rain air honey milk "
                         "information equipment furniture hair grass news".split())


#: two-syllable verbs stressed on the last syllable double their last consonant (controlling, emitting)
_STRESSED_LAST = frozenset("control patrol compel propel expel refer prefer occur begin admit commit emit omit "
                           "permit submit transmit forget regret equip upset".split())


def chinese_number(word: str) -> int | None:
    """一 -> 1, 十二 -> 12, 三百五十 -> 350, "12" -> 12; None if ``word`` is not a number."""
    if word.isdigit():
        return int(word)
    if not word or any(ch not in _DIGITS and ch not in _UNITS for ch in word):
        return None
    total = section = digit = 0
    for ch in word:
        if ch in _DIGITS:
            digit = _DIGITS[ch]
        elif ch == "万":
            total += (section + digit) * 10000
            section = digit = 0
        else:
            section += (digit or 1) * _UNITS[ch]
            digit = 0
    return total + section + digit


def number_english(n: int, *, article: bool) -> str:
    if n == 1 and article:
        return "a"
    return _ENGLISH_NUMBERS[n] if n <= 10 else str(n)


def plural(noun: str) -> str:
    """The plural of a noun phrase's last word: 'dolphin' -> 'dolphins', 'volcanic crater' -> 'volcanic craters'."""
    head, _, last = noun.rpartition(" ")
    lower = last.lower()
    if not last.isalpha() or lower in _UNCOUNTABLE or lower.endswith("s") and not lower.endswith("ss"):
        out = last
    elif lower in _IRREGULAR_PLURALS:
        out = _IRREGULAR_PLURALS[lower]
    elif re.search(r"(s|x|z|ch|sh)$", lower):
        out = last + "es"
    elif re.search(r"[^aeiou]y$", lower):
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


def gerund(verb: str) -> str:
    """'stand' -> 'standing', 'sit' -> 'sitting', 'melt' -> 'melting', 'look at' -> 'looking at'."""
    first, _, rest = verb.partition(" ")
    w = first.lower()
    if not w.isalpha() or w.endswith("ing") or w in ("be",):
        return verb if w != "be" else ""
    if w.endswith("ie"):
        g = first[:-2] + "ying"
    elif w.endswith(("ee", "ye", "oe")) or w == "be":
        g = first + "ing"
    elif w.endswith("e") and len(w) > 2:
        g = first[:-1] + "ing"
    elif re.fullmatch(r"[^aeiou]*[aeiou][^aeiouwxy]", w) or w in _STRESSED_LAST:
        g = first + first[-1] + "ing"
    else:
        g = first + "ing"
    return f"{g} {rest}" if rest else g
