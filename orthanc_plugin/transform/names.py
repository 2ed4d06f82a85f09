"""Structure and plan names through a site table: TG-263 names as shipped plus the site's synonyms.

A name maps to exactly one standard name or to nothing: the table never guesses. Lookup, in order:

1. Helper structures, whose name starts with ``z`` followed by ``_``, a separator, a capital or a
   digit (TG-263's convention for non-clinical structures such as ``z_ring``, ``zPTV_opt``), are
   reported unmapped and never renamed.
2. The table: every TG-263 name, its shipped synonyms and the site's synonyms, compared by
   ``normal_key`` (case, spaces, ``_``, ``-`` and ``.`` ignored). ``Lt``/``Left``/``L`` are never
   interpreted: ``Lt Parotid`` maps only because the table lists it, while ``Parotid L`` maps because
   its key is the key of ``Parotid_L``.
3. The target rule (``target_name``) for GTV/CTV/ITV/IGTV/ICTV/PTV names with a qualifier.

Site table (CSV, ``#`` comments, optional header ``site_name,maps_to``): each row maps a name seen
at the site to a TG-263 name, to a target name the target rule accepts as written, or to a name
the site declares its own with the ``site:`` marker (``ADP1,site:Prostate_ADP``). Errors name the
file and line.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

SHIPPED_CSV = Path(__file__).resolve().parent / "data" / "tg263.csv"
SITE_MARKER = "site:"
SITE_HEADER = ("site_name", "maps_to")
# ROIName is LO: a site's own name longer than this could not be written back.
MAX_NAME = 64

_SEPARATORS = re.compile(r"[\s_\-.]+")
_HELPER = re.compile(r"^[zZ](?:$|[\s_\-.]|[A-Z0-9])")
# TG-263 target names: type, optional classifier (nodal, primary, surgical bed, parenchyma,
# venous thrombosis, vascular), optional spatial number, then qualifiers after an underscore.
_TARGET = re.compile(
    r"^(?P<type>IGTV|ICTV|GTV|CTV|ITV|PTV)(?P<classifier>vas|par|sb|n|p|v)?(?P<number>\d*)"
    r"(?:[ _]+(?P<qualifier>[A-Za-z0-9.]+(?:[ _]+[A-Za-z0-9.]+)*))?$",
    re.IGNORECASE,
)
_QUALIFIER_SEPARATORS = re.compile(r"[ _]+")
_DOSE = re.compile(r"^(?P<value>\d+(?:\.\d+)?)(?P<unit>c?gy)$", re.IGNORECASE)
# TG-263's relative dose levels and evaluation suffix, written in its capitalisation.
_WORDS = {word.casefold(): word for word in ("High", "Mid", "Low", "Eval")}


class NameTableError(ValueError):
    """A table file that cannot be used; the message starts with file:line."""


class Via(StrEnum):
    """How a name was (or was not) matched; the audit shows it next to the name."""

    TG263 = "tg263"  # already a TG-263 name (possibly in other case or separators)
    SYNONYM = "synonym"  # a shipped synonym
    SITE = "site"  # a synonym from the site's table, or a name the site declared its own
    TARGET = "target"  # the target rule
    HELPER = "helper"  # z-prefixed helper structure: never renamed
    NONE = "none"  # no match


@dataclass(frozen=True)
class Match:
    name: str | None
    via: Via


def normal_key(name: str) -> str:
    """The key names are compared by: case-folded, without spaces, ``_``, ``-`` or ``.``.

    ``Lt Parotid`` and ``lt_parotid`` share a key; ``Parotid_L`` and ``Parotid_R`` do not.
    """
    return _SEPARATORS.sub("", name).casefold()


def is_helper(name: str) -> bool:
    return _HELPER.match(name.strip()) is not None


def target_name(name: str) -> str | None:
    """The TG-263 spelling of a target volume name, or None when the name is not one.

    The type is written upper case and a classifier lower case (``gtvp`` -> ``GTVp``), a run of
    spaces or underscores before the qualifiers becomes one ``_`` (``PTV 70`` -> ``PTV_70``), a
    dose unit is written ``Gy``/``cGy`` (``ptv_70gy`` -> ``PTV_70Gy``) and High/Mid/Low/Eval take
    TG-263's capitalisation. Every other qualifier is kept as written: ``PTV70`` stays ``PTV70``
    (to TG-263 a bare number is a spatial index, not a dose, and it is not ours to reinterpret) and
    anything with other characters (``PTV-Rectum``, ``PTV+5mm``) is not a target name here.
    """
    found = _TARGET.match(name.strip())
    if found is None:
        return None
    head = found["type"].upper() + (found["classifier"] or "").lower() + found["number"]
    if found["qualifier"] is None:
        return head
    parts = _QUALIFIER_SEPARATORS.split(found["qualifier"])
    return "_".join([head, *(_qualifier(part) for part in parts)])



def _qualifier(part: str) -> str:
    dose = _DOSE.match(part)
    if dose is not None:
        return dose["value"] + ("cGy" if dose["unit"].lower() == "cgy" else "Gy")
    return _WORDS.get(part.casefold(), part)


@dataclass(frozen=True)
class _Entry:
    name: str
    via: Via
    source: str  # file:line, for error messages


class NameTable:
    """TG-263 names and synonyms plus a site's synonyms; `map` is a pure lookup."""

    def __init__(self) -> None:
        self._keys: dict[str, _Entry] = {}
        self._standard: dict[str, str] = {}  # TG-263 and site-declared names, by key
        self._tg263: set[str] = set()
        self._site_names: set[str] = set()

    @classmethod
    def load(cls, site_csv: Path | None = None, *, tg263_csv: Path = SHIPPED_CSV) -> NameTable:
        table = cls()
        table._read_tg263(tg263_csv)
        if site_csv is not None:
            table._read_site(site_csv)
        return table

    @property
    def tg263_names(self) -> frozenset[str]:
        return frozenset(self._tg263)

    @property
    def site_names(self) -> frozenset[str]:
        """Names the site declared its own (``site:`` marker)."""
        return frozenset(self._site_names)

    def map(self, name: str) -> str | None:
        """The standard name for `name`, or None when there is no match (never a guess)."""
        return self.explain(name).name

    def explain(self, name: str) -> Match:
        text = name.strip()
        if not text:
            return Match(None, Via.NONE)
        if is_helper(text):
            return Match(None, Via.HELPER)
        entry = self._keys.get(normal_key(text))
        if entry is not None:
            return Match(entry.name, entry.via)
        target = target_name(text)
        if target is not None:
            return Match(target, Via.TARGET)
        return Match(None, Via.NONE)

    # -- loading ---------------------------------------------------------------------------

    def _read_tg263(self, path: Path) -> None:
        rows = list(_rows(path, ("name", "synonyms")))
        # Names first, so a synonym listed before its clash is still reported against the name.
        for line, (name, _) in rows:
            where = f"{path}:{line}"
            if not name or name != name.strip():
                raise NameTableError(f"{where}: empty name or spaces around it")
            self._add(normal_key(name), _Entry(name, Via.TG263, where))
            self._standard[normal_key(name)] = name
            self._tg263.add(name)
        for line, (name, synonyms) in rows:
            where = f"{path}:{line}"
            for synonym in filter(None, (part.strip() for part in synonyms.split("|"))):
                if is_helper(synonym):
                    raise NameTableError(f"{where}: synonym {synonym!r} looks like a helper (z prefix)")
                self._add(normal_key(synonym), _Entry(name, Via.SYNONYM, where), synonym)

    def _read_site(self, path: Path) -> None:
        rows = list(_rows(path, SITE_HEADER))
        # Declarations first, so a row may use a site name declared further down the file.
        for line, (_, maps_to) in rows:
            if maps_to.startswith(SITE_MARKER):
                self._declare(maps_to[len(SITE_MARKER):].strip(), f"{path}:{line}")
        for line, (site_name, maps_to) in rows:
            where = f"{path}:{line}"
            if not site_name:
                raise NameTableError(f"{where}: empty site_name")
            if is_helper(site_name):
                raise NameTableError(f"{where}: {site_name!r} is a helper structure (z prefix); "
                                     "helpers are never renamed")
            target = self._target_of(maps_to, where)
            self._add(normal_key(site_name), _Entry(target, Via.SITE, where), site_name)

    def _declare(self, name: str, where: str) -> None:
        if not name:
            raise NameTableError(f"{where}: empty name after {SITE_MARKER}")
        if len(name) > MAX_NAME:
            raise NameTableError(f"{where}: {name!r} is longer than {MAX_NAME} characters")
        key = normal_key(name)
        known = self._keys.get(key)
        if known is not None and not (known.via is Via.SITE and known.name == name):
            raise NameTableError(f"{where}: site name {name!r} is already {known.name!r} "
                                 f"({known.source}); use that name instead")
        if target_name(name) is not None or is_helper(name):
            raise NameTableError(f"{where}: site name {name!r} is a target or helper name; "
                                 "map to it without the site: marker")
        self._keys[key] = _Entry(name, Via.SITE, where)
        self._standard[key] = name
        self._site_names.add(name)

    def _target_of(self, maps_to: str, where: str) -> str:
        if maps_to.startswith(SITE_MARKER):
            return maps_to[len(SITE_MARKER):].strip()
        if not maps_to:
            raise NameTableError(f"{where}: empty maps_to")
        if maps_to in self._tg263 or maps_to in self._site_names or target_name(maps_to) == maps_to:
            return maps_to
        close = self._standard.get(normal_key(maps_to)) or target_name(maps_to)
        hint = f" (did you mean {close!r}?)" if close else f" (prefix {SITE_MARKER} for a site name)"
        raise NameTableError(f"{where}: maps_to {maps_to!r} is not a TG-263 name{hint}")

    def _add(self, key: str, entry: _Entry, spelled: str | None = None) -> None:
        if not key:
            raise NameTableError(f"{entry.source}: name {spelled!r} has no letters or digits")
        known = self._keys.get(key)
        if known is None:
            self._keys[key] = entry
        elif known.name != entry.name:
            shown = spelled if spelled is not None else entry.name
            raise NameTableError(f"{entry.source}: {shown!r} would map to {entry.name!r} but already "
                                 f"maps to {known.name!r} ({known.source})")


def _rows(path: Path, header: tuple[str, str]) -> list[tuple[int, tuple[str, str]]]:
    """(line number, two stripped cells) of each data row; comments, blanks and the header skipped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as error:
        raise NameTableError(f"{path}: cannot read ({error})") from None
    rows: list[tuple[int, tuple[str, str]]] = []
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        cells = next(csv.reader([raw]))
        if len(cells) != 2:
            raise NameTableError(f"{path}:{line}: expected 2 columns ({','.join(header)}), "
                                 f"found {len(cells)}")
        pair = (cells[0].strip(), cells[1].strip())
        if not rows and tuple(cell.lower() for cell in pair) == header:
            continue
        rows.append((line, pair))
    return rows
