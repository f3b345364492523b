"""Mask personal data in a message before it is logged: ``redact(text)``.

What is masked, in this order (each pattern sees the text the earlier ones left):

=============  ==============================================================
``[EMAIL]``    e-mail addresses
``[IP]``       IPv4 addresses
``[ID]``       Chinese resident ID numbers: 18 characters, a valid birth date
               in the middle, the last one a digit or X
``[PHONE]``    numbers with a country code (``+86 138 1234 5678``,
               ``+1 (415) 555-0123``)
``[CARD]``     bank-card numbers: 13 to 19 digits, with or without spaces or
               dashes
``[PHONE]``    Chinese mobiles (``13812345678``, ``138-1234-5678``),
               landlines (``010-12345678``, ``(0755)1234567``) and
               North-American numbers (``(415) 555-0123``, ``400-810-8888``)
``[NUMBER]``   any other run of 6 or more digits (order and account numbers,
               QQ numbers, verification codes)
=============  ==============================================================

The text is NFKC-normalised first, so full-width digits and ``＠`` are caught
too. Masking errs on the side of masking: a 13-digit order number becomes
``[CARD]``, which costs nothing for gating, while a missed phone number would
put customer data in a log. Short numbers (prices, "5G", "2024年") are kept,
since they carry the meaning of the message.
"""

from __future__ import annotations

import re
import unicodedata

#: (placeholder, pattern), applied in order.
PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("[EMAIL]", re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")),
    ("[IP]", re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)(?![\d.])")),
    ("[ID]", re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
                        r"\d{3}[\dXx](?![0-9A-Za-z])")),
    ("[PHONE]", re.compile(r"\+\d{1,3}[ -]?(?:\(\d{1,4}\)[ -]?)?\d(?:[ -]?\d){5,13}(?!\d)")),
    ("[CARD]", re.compile(r"(?<!\d)\d(?:[ -]?\d){12,18}(?!\d)")),
    ("[PHONE]", re.compile(r"(?<!\d)1[3-9]\d[ -]?\d{4}[ -]?\d{4}(?!\d)"
                           r"|(?:\(0\d{2,3}\)[ -]?|(?<!\d)0\d{2,3}[ -]?)\d{3,4}[ -]?\d{4}(?!\d)"
                           r"|(?:\(\d{3}\)[ -]?|(?<!\d)\d{3}[-. ])\d{3}[-. ]\d{4}(?!\d)")),
    ("[NUMBER]", re.compile(r"(?<!\d)\d{6,}(?!\d)")),
)


def redact(text: str) -> str:
    """``text`` (NFKC-normalised) with e-mails, IPs, ID, phone and card numbers and long digit runs masked."""
    clean = unicodedata.normalize("NFKC", text)
    for placeholder, pattern in PATTERNS:
        clean = pattern.sub(placeholder, clean)
    return clean
