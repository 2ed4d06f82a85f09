"""What the worklist's search compares: names, IDs and labels folded so that a physicist typing
"muller", "obrien" or "seed00042" finds MÜLLER^ANNA, O'BRIEN^PAT and SEED-00042. The same folding
is applied to what is stored (on SQLite a SQL function the triggers of plans/tables.py call; on
PostgreSQL, which has no such function, by the writer: plans/store.py fold_search_text) and to the
words searched."""

from __future__ import annotations

import re
import unicodedata

SQL_FUNCTION = "rtgw_fold"
_NOT_WORD = re.compile(r"[^\w ]+")


def fold(text: str | None) -> str:
    """Accents off, case folded, DICOM's ^ a space, punctuation gone (O'Brien, SEED-00042)."""
    if not text:
        return ""
    decomposed = unicodedata.normalize("NFKD", str(text))
    bare = "".join(character for character in decomposed if not unicodedata.combining(character))
    return _NOT_WORD.sub("", bare.casefold().replace("^", " "))
