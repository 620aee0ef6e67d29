"""A per-key limit counts what exists and what is still being built, and frees its count however the build ends."""

from __future__ import annotations

import pytest
from meddl.errors import MeddlError
from meddl.server.limits import PerKeyLimit


class Refused(MeddlError):
    pass


def test_things_being_built_count_against_their_keys_limit():
    existing = {"alice": 1}
    limit = PerKeyLimit(3, lambda key: existing.get(key, 0), lambda held: Refused(f"{held} held"))
    with limit.building("alice"), limit.building("alice"):
        with pytest.raises(Refused, match="3 held"), limit.building("alice"):
            pass
        with limit.building("bob"):  # another key's count is its own
            pass
    with pytest.raises(ValueError), limit.building("alice"):  # a failed build frees its count
        raise ValueError("the build failed")
    existing["alice"] = 2  # built: it exists now
    with limit.building("alice"), pytest.raises(Refused, match="3 held"), limit.building("alice"):
        pass
