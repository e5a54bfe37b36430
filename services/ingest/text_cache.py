"""LRU caches for the lookups ingest repeats per event (user agents, page URLs, referrers,
channels, attribution), bounded in entries AND in the size of what they keep: a call whose text
arguments are longer than `max_chars` in all is computed without being remembered. A write key
is public (it ships in every page's snippet), so anyone can send unique kilobyte-long URLs or
agents; without the second bound, 32,768 such entries would hold a gigabyte."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, TypeVar, cast

R = TypeVar("R")

# Longer than real user agents, page URLs and referrers; far shorter than the 32 KB an event
# may be.
MAX_CACHED_CHARS = 2048


def _chars(value: Any) -> int:
    if type(value) is str:
        return len(value)
    if type(value) is tuple:
        return sum(len(part) for part in value if type(part) is str)
    return 0


def text_cache(
    maxsize: int, max_chars: int = MAX_CACHED_CHARS
) -> Callable[[Callable[..., R]], functools._lru_cache_wrapper[R]]:
    """`functools.lru_cache(maxsize)` for calls whose str (and tuple-of-str) arguments hold at
    most `max_chars` characters in all; longer calls run uncached. Arguments are passed by
    position. `cache_info` and `cache_clear` are the cache's."""

    def decorate(function: Callable[..., R]) -> functools._lru_cache_wrapper[R]:
        cached = functools.lru_cache(maxsize=maxsize)(function)
        call: Callable[..., R]
        if len(inspect.signature(function).parameters) == 1:
            # The common case, one text (a user agent, URL or referrer): one len() per call.
            def call(text: str) -> R:
                return cached(text) if len(text) <= max_chars else function(text)
        else:

            def call(*args: Any) -> R:
                size = 0
                for arg in args:
                    size += len(arg) if type(arg) is str else _chars(arg)
                if size <= max_chars:
                    return cached(*args)
                return function(*args)

        functools.update_wrapper(call, function)

        wrapper = cast(Any, call)
        wrapper.cache_info = cached.cache_info
        wrapper.cache_clear = cached.cache_clear
        return cast("functools._lru_cache_wrapper[R]", call)

    return decorate
