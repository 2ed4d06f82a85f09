"""Named groups of destinations, usable wherever a target is written:

    groups:
      TPS: [ORGANO, MOSAIQ]

    rules:
      - ...
        actions:
          - forward: [TPS, ARCHIVE]     # ORGANO, MOSAIQ and ARCHIVE

A group is expanded when the rules are read, so every job still has one modality as its target
(its caps, windows, failover and audit rows stay per modality). Groups do not nest, and a group
may not be named like a modality (a reader could not tell which one was meant).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from orthanc_plugin.rules.errors import RulesError
from orthanc_plugin.rules.wording import kind_of, one_of

SECTION = "groups"
Groups = Mapping[str, tuple[str, ...]]


def parse_groups(raw: Any, known_targets: Collection[str] | None) -> dict[str, tuple[str, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RulesError(SECTION, f"expected a mapping of group names to destinations, "
                                  f"got {kind_of(raw)}")
    groups: dict[str, tuple[str, ...]] = {}
    for name, members in raw.items():
        here = f"{SECTION}.{name}"
        if not str(name).strip():
            raise RulesError(here, "expected a group name")
        if known_targets is not None and name in known_targets:
            raise RulesError(here, f"'{name}' is already a destination's name: name the group "
                                   "differently")
        if isinstance(members, str):
            members = [members]
        if not isinstance(members, list) or not members:
            raise RulesError(here, f"expected a list of destinations, got {kind_of(members)}")
        listed: list[str] = []
        for index, member in enumerate(members):
            at = f"{here}[{index}]"
            if not isinstance(member, str) or not member.strip():
                raise RulesError(at, f"expected a destination name, got {kind_of(member)}")
            if member in raw:
                raise RulesError(at, f"'{member}' is a group: groups do not nest")
            if known_targets is not None and member not in known_targets:
                raise RulesError(at, f"unknown destination '{member}' "
                                     f"(known: {one_of(known_targets) if known_targets else 'none'})")
            if member in listed:
                raise RulesError(at, f"duplicate destination '{member}'")
            listed.append(member)
        groups[str(name)] = tuple(listed)
    return groups


def expand(names: Sequence[str], groups: Groups) -> list[str]:
    """Group names replaced by their members, each destination once, in the order written."""
    targets: list[str] = []
    for name in names:
        for target in groups.get(name, (name,)):
            if target not in targets:
                targets.append(target)
    return targets
