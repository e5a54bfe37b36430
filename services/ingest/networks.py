"""Sets of IP networks (trusted proxies, bot ranges) and where a request really came from.

Lookups bisect sorted, merged integer ranges, so a list of thousands of CIDRs costs a few
comparisons per address.
"""

from __future__ import annotations

import bisect
import ipaddress
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from libs.common.errors import StrataError


class NetworkListError(StrataError, ValueError):
    """A network list entry that is not a CIDR or an address (the message names it)."""

    code = "invalid_network_list"


class NetworkSet:
    """Membership of IPv4/IPv6 addresses in a set of CIDR networks."""

    def __init__(self, networks: Iterable[str]) -> None:
        ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
        count = 0
        for text in networks:
            try:
                network = ipaddress.ip_network(text.strip(), strict=False)
            except ValueError:
                raise NetworkListError(f"{text.strip()!r} is not an IP network (CIDR)") from None
            ranges[network.version].append(
                (int(network.network_address), int(network.broadcast_address))
            )
            count += 1
        self.size = count
        self._starts: dict[int, list[int]] = {}
        self._ends: dict[int, list[int]] = {}
        for version, spans in ranges.items():
            merged: list[tuple[int, int]] = []
            for start, end in sorted(spans):
                if merged and start <= merged[-1][1] + 1:
                    merged[-1] = (merged[-1][0], max(merged[-1][1], end))
                else:
                    merged.append((start, end))
            self._starts[version] = [start for start, _ in merged]
            self._ends[version] = [end for _, end in merged]
        self.contains = lru_cache(maxsize=65536)(self._contains)

    def __bool__(self) -> bool:
        return self.size > 0

    def _contains(self, ip: str) -> bool:
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            return False
        if address.version == 6 and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        starts = self._starts[address.version]
        value = int(address)
        index = bisect.bisect_right(starts, value) - 1
        return index >= 0 and value <= self._ends[address.version][index]


def parse_network_list(text: str) -> list[str]:
    """CIDRs from a file's text or a setting: one per line or comma-separated; `#` starts a
    comment."""
    found: list[str] = []
    for line in text.splitlines():
        for part in line.split("#", 1)[0].split(","):
            if part.strip():
                found.append(part.strip())
    return found


def load_network_file(path: str) -> NetworkSet:
    """The networks listed in a file (see `parse_network_list`)."""
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise NetworkListError(f"cannot read {path}: {exc.strerror or exc}") from None
    return NetworkSet(parse_network_list(text))


# Longer than any address with a port ("[v6 with embedded v4]:port"): such text is parsed
# without being cached, so a sender's long header values cannot fill the cache's memory.
_CACHED_ADDRESS_CHARS = 64


def _address(text: str) -> str | None:
    """`text` (an address, maybe with a port) as a normalised address, or None; cached per
    text, since every request parses its peer's address and most peers send many."""
    if len(text) <= _CACHED_ADDRESS_CHARS:
        return _short_address(text)
    return _parse_address(text)


def _parse_address(text: str) -> str | None:
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.9:443"
        text = text.split(":", 1)[0]
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return None


_short_address = lru_cache(maxsize=65536)(_parse_address)


def client_ip(remote: str | None, forwarded_for: str | None, trusted: NetworkSet) -> str | None:
    """The client's address: the peer's, unless the peer is a trusted proxy, in which case the
    right-most X-Forwarded-For entry that is not itself a trusted proxy. Entries left of it
    were written by the client and could be forged, so they are never believed."""
    peer = _address(remote) if remote else None
    if peer is None or not forwarded_for or not trusted or not trusted.contains(peer):
        return peer
    hops = [_address(part) for part in forwarded_for.split(",")]
    for hop in reversed(hops):
        if hop is None:
            return peer  # a garbled chain: trust nothing past the proxy we know
        if not trusted.contains(hop):
            return hop
    return hops[0] or peer


def valid_ip(text: str | None) -> str | None:
    """`text` as a normalised IP address, or None when it is not one."""
    return _address(text) if text else None
