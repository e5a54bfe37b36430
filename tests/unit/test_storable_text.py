"""The NUL pre-check both HTTP services run on every body: it may say "maybe" wrongly, never
"no" wrongly, whatever the escapes around the NUL."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from libs.common.storable_text import may_hold_nul, nul_path

# Characters that make escapes: backslashes, quotes, control characters, NUL itself, and text
# that looks like a NUL escape.
_tricky = st.text(alphabet=["a", "\\", "\x00", '"', "u", "0", "\x01", "é", "\n"], max_size=40)
# Values a JSON body may carry, nested.
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | _tricky,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(_tricky, children, max_size=4)
    ),
    max_leaves=12,
)


@given(_values, st.booleans())
def test_a_nul_anywhere_is_never_missed(value: object, ascii_only: bool) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode()
    if nul_path(json.loads(raw)) is not None:
        assert may_hold_nul(raw)


def test_text_that_only_looks_like_a_nul_escape_is_no_nul() -> None:
    assert not may_hold_nul(json.dumps({"k": "\\u0000"}).encode())  # the text \u0000
    assert not may_hold_nul(b'{"k": "plain", "n": 10000}')
    assert may_hold_nul(json.dumps({"k": "a\x00b"}).encode())
    # Past the escapes walked one by one, a NUL is still found.
    many = json.dumps({"k": "é" * 100 + "\x00"}).encode()
    assert may_hold_nul(many)
    assert not may_hold_nul(json.dumps({"k": "é" * 100}).encode())
