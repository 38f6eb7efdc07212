"""`translate` over HTTP: the field in every encoding, and headers that say what each encoder got."""

from __future__ import annotations

import json

from app.http.prompt_headers import CUT_MARK, capped_json
from tests.http_support import SMALL, pixels, png_info, wait_until

PROMPT = "科普主持人，专业形象，微笑"
ENGLISH = "science show host, professional look, smiling"


def test_headers_say_original_glossary_english_and_t5_share_in_ascii(client):
    r = client.post("/api/generate-image", data={"prompt": PROMPT, "seed": "5", **SMALL})
    assert r.status_code == 200, r.text
    h = r.headers
    for name in ("x-prompt-original", "x-prompt-english", "x-prompt-clip", "x-prompt-t5", "x-prompt-glossary"):
        assert h[name].isascii(), name
    assert h["x-prompt-translate"] == "auto"
    assert json.loads(h["x-prompt-original"]) == PROMPT
    assert json.loads(h["x-prompt-english"]) == json.loads(h["x-prompt-clip"]) == json.loads(h["x-prompt-t5"]) == ENGLISH
    assert json.loads(h["x-prompt-glossary"]) == [["科普主持人", "science show host"], ["专业形象", "professional look"],
                                                  ["微笑", "smiling"]]
    assert json.loads(h["x-prompt-translated"]) == [] and json.loads(h["x-prompt-translator"]) is None
    assert json.loads(h["x-prompt-words"]) == [[zh, en, "glossary"] for zh, en in json.loads(h["x-prompt-glossary"])]
    assert json.loads(h["x-prompt-dictionary"]) is None  # the glossary covered everything
    assert (h["x-t5-unknown-before"], h["x-t5-unknown-after"]) == ("1.000", "0.000")
    assert png_info(r.content)[1]["prompt_english"] == ENGLISH


def test_translate_off_in_json_sends_the_prompt_as_typed(client):
    r = client.post("/api/generate-image", json={"prompt": PROMPT, "translate": "off", "seed": 5,
                                                 "width": 64, "height": 64, "num_inference_steps": 2})
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["x-prompt-t5"]) == PROMPT and r.headers["x-t5-unknown-after"] == "1.000"


def test_the_english_sent_back_with_translate_off_gives_the_same_pixels(client):
    auto = client.post("/api/generate-image", data={"prompt": PROMPT, "seed": "5", **SMALL})
    english = json.loads(auto.headers["x-prompt-english"])
    edited = client.post("/api/generate-image", data={"prompt": english, "translate": "off", "seed": "5", **SMALL})
    assert edited.status_code == 200
    assert png_info(edited.content)[1]["prompt"] == png_info(auto.content)[1]["prompt"] == english
    assert pixels(edited.content) == pixels(auto.content)


def test_bad_translate_value_is_a_422_naming_the_field(client):
    r = client.post("/api/generate-image", data={"prompt": PROMPT, "translate": "english", **SMALL})
    assert r.status_code == 422
    assert r.json()["error"]["param"] == "translate"


def test_jobs_info_has_the_prompt_record(client):
    r = client.post("/api/jobs", data={"prompt": "微笑着的科普主持人", "translate": "auto", **SMALL})
    assert r.status_code == 202, r.text
    done = wait_until(lambda: (j := client.get(f"/api/jobs/{r.json()['id']}").json())["status"] == "succeeded" and j)
    info = done["info"]
    assert info["prompt_original"] == "微笑着的科普主持人" and info["prompt_english"] == "smiling science show host"
    assert info["prompt_words"] == [["微笑", "smiling", "glossary"], ["着", "", "dictionary"], ["的", "", "dictionary"],
                                    ["科普主持人", "science show host", "glossary"]]
    assert "CC-CEDICT" in info["dictionary"] and info["translator"] is None and info["translated"] == []


def test_dictionary_words_in_headers_and_a_long_chinese_prompt_stays_under_16_kb_of_headers(client):
    r = client.post("/api/generate-image", data={"prompt": "主持人站在火山口旁边", "seed": "5", **SMALL})
    h = r.headers
    assert json.loads(h["x-prompt-english"]) == "host standing beside volcanic crater"
    assert ["火山口", "volcanic crater", "dictionary"] in json.loads(h["x-prompt-words"])
    assert "CC-CEDICT" in json.loads(h["x-prompt-dictionary"]) and h["x-prompt-words"].isascii()
    long = ("科普主持人站在冰川前面，一群蜜蜂飞过黑洞，" * 100)[:2000]
    r = client.post("/api/generate-image", data={"prompt": long, "seed": "5", **SMALL})
    assert r.status_code == 200, r.text
    assert json.loads(r.headers["x-prompt-words"])[-1] == CUT_MARK  # cut, and said so
    assert sum(len(k) + len(v) + 4 for k, v in r.headers.items()) < 16 * 1024


def test_long_header_values_are_cut_with_a_marker_not_silently():
    value = "科" * 2000
    out = capped_json(value)
    assert len(out) <= 2048 and out.isascii()
    assert json.loads(out).endswith(CUT_MARK) and json.loads(out).startswith("科" * 100)
    assert capped_json(["x" * 50] * 100, limit=300).endswith(json.dumps(CUT_MARK, ensure_ascii=True) + "]")


def test_prompt_warnings_header_is_cut_like_the_other_prompt_headers(client):
    """Issue 17 item 12: a 2000-character prompt gave a 29 KB X-Prompt-Warnings (the X-Prompt-* headers are cut at
    2048 characters); it is cut the same way and says so, the full list stays in the PNG metadata."""
    # rare characters (CJK extension B) no stage can translate: the warning that says so quotes them
    r = client.post("/api/generate-image", data={"prompt": "𠀀𠀁𠀂" * 666, **SMALL})
    assert r.status_code == 200, r.text
    raw = r.headers["x-prompt-warnings"]
    assert len(raw) <= 2048 and raw.isascii()
    cut = json.loads(raw)
    assert cut[-1].endswith(CUT_MARK)
    full = png_info(r.content)[1]["warnings"]  # the whole list, as before
    assert len(json.dumps(full, ensure_ascii=True)) > 2048
    assert cut[:-1] == full[:len(cut) - 1] and full[len(cut) - 1].startswith(cut[-1][:-len(CUT_MARK)])


def test_a_list_whose_first_item_alone_is_too_long_keeps_its_start():
    out = capped_json(["y" * 5000, "z"], limit=300)
    assert len(out) <= 300 and json.loads(out)[0].startswith("y" * 100) and json.loads(out)[-1].endswith(CUT_MARK)
