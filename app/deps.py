"""Dependency aliases so handler signatures stay short."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import ApiError
from app.runtime import Runtime
from app.settings import Settings


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


def get_ready_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    if not runtime.ready:
        detail = f"not ready: {runtime.error}" if runtime.error else "not ready: still loading the index and model"
        raise ApiError(503, detail, headers={"Retry-After": "5"})
    return runtime


def get_settings_dep(request: Request) -> Settings:
    return request.app.state.settings


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
ReadyDep = Annotated[Runtime, Depends(get_ready_runtime)]
SettingsDep = Annotated[Settings, Depends(get_settings_dep)]


def check_k(k: int, settings: Settings) -> int:
    if not 1 <= k <= settings.max_k:
        raise ApiError(422, f"k must be between 1 and {settings.max_k}, got {k}")
    return k


def check_text(text: str, settings: Settings, what: str = "text") -> str:
    text = text.strip()
    if not text:
        raise ApiError(422, f"{what} is empty")
    if len(text) > settings.max_text_chars:
        raise ApiError(422, f"{what} is {len(text)} characters, over the limit of {settings.max_text_chars}")
    return text
