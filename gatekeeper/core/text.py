"""Message text helpers: clean-up before embedding, and language detection by script."""

from __future__ import annotations

import re
import unicodedata

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z\u00c0-\u024f]")
_KANA = re.compile(r"[\u3040-\u30ff\u31f0-\u31ff]")
_HANGUL = re.compile(r"[\u1100-\u11ff\u3130-\u318f\uac00-\ud7af]")
_OTHER_SCRIPTS = (
    (re.compile(r"[\u0400-\u04ff]"), "ru"), (re.compile(r"[\u0600-\u06ff]"), "ar"),
    (re.compile(r"[\u0e00-\u0e7f]"), "th"), (re.compile(r"[\u0590-\u05ff]"), "he"),
    (re.compile(r"[\u0900-\u097f]"), "hi"), (re.compile(r"[\u0370-\u03ff]"), "el"),
)
_SPACES = re.compile(r"\s+")


def normalise(text: str, max_chars: int) -> tuple[str, bool]:
    """NFKC-normalise, collapse white space and cut to ``max_chars``.

    Returns the clean text and whether it was truncated.
    """
    clean = _SPACES.sub(" ", unicodedata.normalize("NFKC", text)).strip()
    if len(clean) > max_chars:
        return clean[:max_chars], True
    return clean, False


def detect_language(text: str) -> str:
    """The language of a message by its script, for picking a reply: zh, ja, ko, en, ... or 'default'.

    Kana means Japanese and Hangul Korean, even beside Chinese characters;
    otherwise 'zh' if the text has at least as many Chinese characters as
    Latin letters / 4 (Chinese needs far fewer characters than English for
    the same content, so "5G套餐怎么改" is Chinese). Latin script counts as
    English; a few other scripts map to their main language; anything else
    (digits, emoji, empty) is 'default'.
    """
    if _KANA.search(text):
        return "ja"
    if _HANGUL.search(text):
        return "ko"
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    if cjk and cjk * 4 >= latin:
        return "zh"
    if latin:
        return "en"
    for script, language in _OTHER_SCRIPTS:
        if script.search(text):
            return language
    return "default"
