"""Referrer spam: hosts that send fake visits to appear in referrer reports. The list is the
operator's file in the format of Matomo's community-maintained referrer-spam-list
(`spammers.txt`: one host per line), read once at start-up (docs/enrichment.md)."""

from __future__ import annotations

from pathlib import Path

from libs.common.errors import StrataError


class ReferrerSpamListError(StrataError, ValueError):
    """The list cannot be read or holds something that is not a host name."""

    code = "invalid_referrer_spam_list"


class ReferrerSpamList:
    """Hosts whose referrals are spam; a listed host's subdomains are spam too."""

    def __init__(self, hosts: set[str]) -> None:
        self._hosts = frozenset(hosts)

    def __len__(self) -> int:
        return len(self._hosts)

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        host = host.lower().rstrip(".")
        while True:
            if host in self._hosts:
                return True
            dot = host.find(".")
            if dot < 0:
                return False
            host = host[dot + 1 :]

    @classmethod
    def parse(cls, text: str) -> ReferrerSpamList:
        hosts = set()
        for number, line in enumerate(text.splitlines(), start=1):
            host = line.split("#", 1)[0].strip().lower().removeprefix("www.")
            if not host:
                continue
            if any(c in host for c in "/: \t") or "." not in host:
                raise ReferrerSpamListError(f"line {number}: {line.strip()!r} is not a host name")
            hosts.add(host)
        return cls(hosts)


def load_referrer_spam_list(path: str) -> ReferrerSpamList:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ReferrerSpamListError(f"cannot read {path}: {exc.strerror or exc}") from None
    return ReferrerSpamList.parse(text)
