"""Value specs: how one condition tests one text value (an AE title, a tag, a plan label)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any, TypeAlias

IpNetwork: TypeAlias = ipaddress.IPv4Network | ipaddress.IPv6Network


def _fold(text: str, ignore_case: bool) -> str:
    return text.casefold() if ignore_case else text


def _case_note(ignore_case: bool) -> str:
    return " (ignoring case)" if ignore_case else ""


@dataclass(frozen=True)
class Equals:
    value: str
    ignore_case: bool = False

    def test(self, text: str) -> bool:
        return _fold(text, self.ignore_case) == _fold(self.value, self.ignore_case)

    def term(self) -> str:
        return f"'{self.value}'{_case_note(self.ignore_case)}"

    def phrase(self, holds: bool) -> str:
        return f"{'matches' if holds else 'does not match'} {self.term()}"


@dataclass(frozen=True)
class Contains:
    value: str
    ignore_case: bool = False

    def test(self, text: str) -> bool:
        return _fold(self.value, self.ignore_case) in _fold(text, self.ignore_case)

    def term(self) -> str:
        return f"contains '{self.value}'{_case_note(self.ignore_case)}"

    def phrase(self, holds: bool) -> str:
        verb = "contains" if holds else "does not contain"
        return f"{verb} '{self.value}'{_case_note(self.ignore_case)}"


@dataclass(frozen=True)
class Regex:
    # Compiled when the rules load, so a bad pattern is refused then and never costs per instance.
    pattern: Any  # an RE2 pattern (linear-time matching)
    ignore_case: bool = False

    def test(self, text: str) -> bool:
        return self.pattern.search(text) is not None

    def term(self) -> str:
        return f"regex '{self.pattern.pattern}'{_case_note(self.ignore_case)}"

    def phrase(self, holds: bool) -> str:
        return f"{'matches' if holds else 'does not match'} {self.term()}"


@dataclass(frozen=True)
class Glob:
    value: str
    ignore_case: bool = False

    def test(self, text: str) -> bool:
        # fnmatchcase, not fnmatch: AE titles must not follow the host's case rules.
        return fnmatchcase(_fold(text, self.ignore_case), _fold(self.value, self.ignore_case))

    def term(self) -> str:
        return f"glob '{self.value}'{_case_note(self.ignore_case)}"

    def phrase(self, holds: bool) -> str:
        return f"{'matches' if holds else 'does not match'} {self.term()}"


@dataclass(frozen=True)
class Cidr:
    network: IpNetwork

    def test(self, text: str) -> bool:
        try:
            address = ipaddress.ip_address(text.strip())
        except ValueError:
            return False
        # A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d; rules are written in IPv4.
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return address.version == self.network.version and address in self.network

    def term(self) -> str:
        return f"cidr {self.network}"

    def phrase(self, holds: bool) -> str:
        return f"{'is' if holds else 'is not'} in {self.network}"


Operator: TypeAlias = Equals | Contains | Regex | Glob | Cidr


@dataclass(frozen=True)
class AnyValue:
    """A list in the rules file: the value must satisfy at least one of the options."""

    options: tuple[Operator, ...]

    def test(self, text: str) -> bool:
        return any(option.test(text) for option in self.options)

    def term(self) -> str:
        return f"one of: {self._options()}"

    def phrase(self, holds: bool) -> str:
        return f"matches {'one' if holds else 'none'} of: {self._options()}"

    def _options(self) -> str:
        return ", ".join(option.term() for option in self.options)


ValueSpec: TypeAlias = Operator | AnyValue
