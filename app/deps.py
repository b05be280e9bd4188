"""Dependency aliases so handler signatures stay short."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query, Request

from xmodal.app.middleware import index_version_var
from xmodal.app.runtime import Runtime
from xmodal.app.served import ServedIndex
from xmodal.app.settings import DEFAULT_INDEX, Settings
from xmodal.models.errors import InvalidInput, NotFound, Unavailable


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_ready_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    if not runtime.ready:
        detail = f"not ready: {runtime.error}" if runtime.error else "not ready: still loading the index and model"
        raise Unavailable(detail)
    return runtime


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ReadyDep = Annotated[Runtime, Depends(get_ready_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]
IndexQuery = Annotated[
    str | None, Query(alias="index", description="Which served index (GET /v1/indexes); optional when one is served")
]


def pick_index(runtime: Runtime, *names: object) -> ServedIndex:
    """The served index a request names (in its body and/or query; they must agree), or the default one:
    the only index, else the one named "default". 404 for an unknown name. Its version at this moment, the one a
    handler that takes `served.index` next reads, goes back in the X-Xmodal-Index-Version header."""
    served = _named_index(runtime, *names)
    index_version_var.set(served.index.version.name)
    return served


def _named_index(runtime: Runtime, *names: object) -> ServedIndex:
    given: list[str] = []
    for name in names:
        if name is not None and not isinstance(name, str):
            raise InvalidInput("index must be a string: the name of a served index")
        if name is not None:
            given.append(name)
    if len(set(given)) > 1:
        raise InvalidInput(f"index is named twice, differently: {sorted(map(str, set(given)))}")
    name = given[0] if given else None
    served = runtime.indexes
    if name is None:
        if len(served) == 1:
            return next(iter(served.values()))
        if DEFAULT_INDEX in served:
            return served[DEFAULT_INDEX]
        raise InvalidInput(f"this server has several indexes ({', '.join(served)}): name one with `index`")
    if name not in served:
        raise NotFound(f"no index named {name!r}; this server has: {', '.join(served)}")
    return served[name]


def check_k(k: int, settings: Settings) -> int:
    if not 1 <= k <= settings.max_k:
        raise InvalidInput(f"k must be between 1 and {settings.max_k}, got {k}")
    return k


def check_text(text: str, settings: Settings, what: str = "text") -> str:
    text = text.strip()
    if not text:
        raise InvalidInput(f"{what} is empty")
    if len(text) > settings.max_text_chars:
        raise InvalidInput(f"{what} is {len(text)} characters, over the limit of {settings.max_text_chars}")
    return text
