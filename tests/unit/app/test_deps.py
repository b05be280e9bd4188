"""pick_index: which served index a request means, and the 404/422 answers when it cannot say."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from xmodal.app.deps import pick_index
from xmodal.app.errors import ApiError


def _runtime(*names):
    return SimpleNamespace(indexes={name: f"served {name}" for name in names})


def _refused(runtime, *names) -> ApiError:
    with pytest.raises(ApiError) as raised:
        pick_index(runtime, *names)
    return raised.value


def test_a_name_from_the_body_or_the_query_picks_that_index():
    runtime = _runtime("photos", "docs")
    assert pick_index(runtime, "docs", None) == pick_index(runtime, None, "docs") == "served docs"
    assert pick_index(runtime, "docs", "docs") == "served docs"


def test_without_a_name_the_only_index_or_the_one_named_default():
    assert pick_index(_runtime("photos"), None, None) == "served photos"
    assert pick_index(_runtime("photos", "default"), None) == "served default"
    refused = _refused(_runtime("photos", "docs"), None)
    assert refused.status == 422 and "several indexes (photos, docs)" in refused.detail


def test_unknown_conflicting_and_non_string_names_are_refused():
    runtime = _runtime("photos", "docs")
    unknown = _refused(runtime, "videos")
    assert (unknown.status, unknown.detail) == (404, "no index named 'videos'; this server has: photos, docs")
    assert _refused(runtime, "photos", "docs").status == 422
    assert _refused(runtime, ["photos"]).detail == "index must be a string: the name of a served index"
