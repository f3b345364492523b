"""Message text helpers: clean-up before embedding, and zh/en language detection."""

from __future__ import annotations

import re
import unicodedata

_CJK = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN = re.compile(r"[A-Za-z]")
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
    """'zh' if the text has at least as many CJK characters as Latin words' letters / 4, else 'en'.

    Chinese needs far fewer characters than English for the same content, so a
    message like "5G套餐怎么改" counts as Chinese.
    """
    cjk = len(_CJK.findall(text))
    latin = len(_LATIN.findall(text))
    return "zh" if cjk and cjk * 4 >= latin else "en"
