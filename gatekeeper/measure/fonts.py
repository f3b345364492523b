"""A CJK font for the report images, so Chinese catalog and intent names render instead of empty boxes.

matplotlib's bundled DejaVu Sans has no Chinese glyphs. This module finds an
installed font that has them and returns matplotlib settings that keep DejaVu
Sans first (Latin text looks as before) and fall back to that font per glyph.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

log = logging.getLogger(__name__)

#: The Debian package that .ci/run and deploy/Dockerfile install (5 MB installed).
FONT_PACKAGE = "fonts-wqy-microhei"
MISSING_CJK_FONT = ("no CJK font found: Chinese text in report images would show as empty boxes; "
                    f"install one, e.g. 'apt-get install {FONT_PACKAGE}'")
#: Common fonts with Simplified Chinese glyphs, tried first, in this order; any other font with them still works.
PREFERRED_FAMILIES = ("Noto Sans CJK SC", "Source Han Sans SC", "WenQuanYi Micro Hei", "WenQuanYi Zen Hei",
                      "Droid Sans Fallback", "Microsoft YaHei", "PingFang SC", "SimHei")
#: A font counts as CJK-capable when it has glyphs for these characters.
PROBE = "中文字"
LATIN_FAMILY = "DejaVu Sans"
_CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")


def has_cjk(text: str) -> bool:
    """Whether ``text`` contains Chinese, Japanese or Korean characters (or full-width forms)."""
    return bool(_CJK.search(text))


def has_cjk_glyphs(path: str | Path) -> bool:
    """Whether the font file at ``path`` has glyphs for every character of :data:`PROBE`."""
    from matplotlib.ft2font import FT2Font

    try:
        font = FT2Font(str(path))
    except (OSError, RuntimeError, ValueError):
        return False
    return all(font.get_char_index(ord(char)) for char in PROBE)


def candidate_files() -> Iterator[Path]:
    """Font files to try: matplotlib's known fonts (preferred families first), then system fonts it has not cached.

    The second group finds a font installed after matplotlib built its font cache.
    matplotlib's bundled fonts are skipped: its "Last Resort" font maps every
    character to a placeholder box, and the others have no Chinese glyphs.
    """
    import matplotlib
    from matplotlib import font_manager

    bundled = Path(matplotlib.get_data_path()).resolve()
    entries = sorted(font_manager.fontManager.ttflist, key=lambda entry: _preference(entry.name))
    known = [Path(entry.fname) for entry in entries]
    yield from (path for path in known if not path.resolve().is_relative_to(bundled))
    cached = set(known)
    yield from (path for path in map(Path, font_manager.findSystemFonts()) if path not in cached)


def find_cjk_font(files: Iterable[Path] | None = None) -> str | None:
    """The family name of the first font among ``files`` (default :func:`candidate_files`) with Chinese glyphs.

    The font is registered with matplotlib, so the name can be used in its settings.
    """
    from matplotlib import font_manager

    for path in candidate_files() if files is None else files:
        if has_cjk_glyphs(path):
            font_manager.fontManager.addfont(str(path))
            return font_manager.FontProperties(fname=str(path)).get_name()
    return None


def cjk_font_settings(texts: Iterable[str]) -> dict[str, list[str]]:
    """matplotlib rc settings falling back from DejaVu Sans to an installed CJK font.

    Without a CJK font the settings are empty, and :data:`MISSING_CJK_FONT` is
    logged as a warning if any of ``texts`` (the names the images will show)
    has CJK characters; an English-only report needs no such font.
    """
    family = find_cjk_font()
    if family is not None:
        return {"font.family": [LATIN_FAMILY, family]}
    if any(has_cjk(text) for text in texts):
        log.warning("no_cjk_font", extra={"hint": MISSING_CJK_FONT})
    return {}


def _preference(family: str) -> int:
    """Sort key: the index in :data:`PREFERRED_FAMILIES`, other families after them."""
    return PREFERRED_FAMILIES.index(family) if family in PREFERRED_FAMILIES else len(PREFERRED_FAMILIES)
