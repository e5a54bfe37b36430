"""LRU caches for the lookups ingest repeats per event (user agents, page URLs, referrers,
channels, attribution), bounded in entries AND in the size of what they keep: a call whose text
arguments are longer than `max_chars` in all is computed without being remembered. A write key
is public (it ships in every page's snippet), so anyone can send unique kilobyte-long URLs or
agents; without the second bound, 32,768 such entries would hold a gigabyte."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar, cast

from libs.common.errors import StrataError

R = TypeVar("R")

# Longer than real user agents, page URLs and referrers; far shorter than the 32 KB an event
# may be.
MAX_CACHED_CHARS = 2048


def _chars(args: tuple[Any, ...]) -> int:
    size = 0
    for arg in args:
        if type(arg) is str:
            size += len(arg)
        elif type(arg) is tuple:
            size += sum(len(part) for part in arg if type(part) is str)
    return size


class UncachedResult(StrataError):
    """Carries a result out of an LRU cache without the cache keeping it (an LRU cache keeps
    no call that raised); caught by the cache's wrapper, or by a caller of `raw_lookup`."""

    code = "uncached_result"

    def __init__(self, result: Any) -> None:
        self.result = result


_RAW_LOOKUPS: dict[Callable[..., Any], Callable[..., Any]] = {}


def raw_lookup(cached_function: Callable[..., R]) -> Callable[..., R]:
    """The LRU cache inside a `text_cache` function, without the Python wrapper around it: a
    hit costs the C cache lookup alone (about half the wrapped call's time), but a call whose
    text is too long to keep raises `UncachedResult`, whose `result` the caller takes. For
    the per-event call sites only."""
    return cast(Callable[..., R], _RAW_LOOKUPS[cached_function])


def text_cache(
    maxsize: int, max_chars: int = MAX_CACHED_CHARS
) -> Callable[[Callable[..., R]], functools._lru_cache_wrapper[R]]:
    """`functools.lru_cache(maxsize)` for calls whose str (and tuple-of-str) arguments hold at
    most `max_chars` characters in all; longer calls run uncached. Arguments are passed by
    position. `cache_info` and `cache_clear` are the cache's.

    The size is measured only on a miss, after computing: a hit (nearly every call) costs the
    cache lookup alone."""

    def decorate(function: Callable[..., R]) -> functools._lru_cache_wrapper[R]:
        def computed(*args: Any) -> R:
            result = function(*args)
            if _chars(args) > max_chars:
                raise UncachedResult(result)
            return result

        cached = functools.lru_cache(maxsize=maxsize)(computed)

        def call(*args: Any) -> R:
            try:
                return cached(*args)
            except UncachedResult as uncached:
                return cast(R, uncached.result)

        functools.update_wrapper(call, function)
        _RAW_LOOKUPS[call] = cached
        wrapper = cast(Any, call)
        wrapper.cache_info = cached.cache_info
        wrapper.cache_clear = cached.cache_clear
        return cast("functools._lru_cache_wrapper[R]", call)

    return decorate
