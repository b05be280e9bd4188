"""pick_index: which served index a request means, and the 404/422 answers when it cannot say."""

from __future__ import annotations

import contextvars
from pathlib import Path
from types import SimpleNamespace

import pytest

from xmodal.app.deps import pick_index
from xmodal.app.errors import status_of
from xmodal.app.middleware import index_version_var
from xmodal.models.errors import InvalidInput, NotFound, XmodalError


def _runtime(*names):
    """Served indexes as far as pick_index looks: a name and the version open now."""
    return SimpleNamespace(
        indexes={
            name: SimpleNamespace(name=f"served {name}", index=SimpleNamespace(version=Path(f"/i/v1-{name}")))
            for name in names
        }
    )


def _picked(runtime, *names) -> str:
    return pick_index(runtime, *names).name


def _refused(runtime, *names) -> XmodalError:
    with pytest.raises(XmodalError) as raised:
        pick_index(runtime, *names)
    return raised.value


def test_a_name_from_the_body_or_the_query_picks_that_index():
    runtime = _runtime("photos", "docs")
    assert _picked(runtime, "docs", None) == _picked(runtime, None, "docs") == "served docs"
    assert _picked(runtime, "docs", "docs") == "served docs"


def test_the_picked_version_is_what_the_response_header_names():
    def pick_and_read() -> str | None:
        pick_index(_runtime("photos", "docs"), "docs")
        return index_version_var.get()

    assert contextvars.copy_context().run(pick_and_read) == "v1-docs"


def test_without_a_name_the_only_index_or_the_one_named_default():
    assert _picked(_runtime("photos"), None, None) == "served photos"
    assert _picked(_runtime("photos", "default"), None) == "served default"
    refused = _refused(_runtime("photos", "docs"), None)
    assert isinstance(refused, InvalidInput) and status_of(refused) == 422
    assert "several indexes (photos, docs)" in str(refused)


def test_unknown_conflicting_and_non_string_names_are_refused():
    runtime = _runtime("photos", "docs")
    unknown = _refused(runtime, "videos")
    assert isinstance(unknown, NotFound) and status_of(unknown) == 404
    assert str(unknown) == "no index named 'videos'; this server has: photos, docs"
    assert isinstance(_refused(runtime, "photos", "docs"), InvalidInput)
    assert str(_refused(runtime, ["photos"])) == "index must be a string: the name of a served index"
