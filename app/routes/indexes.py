"""GET /v1/indexes: every served index with its manifest and the models loaded; per-index reload (admin)."""

from __future__ import annotations

from fastapi import APIRouter

from xmodal.app.deps import ReadyDep, pick_index
from xmodal.app.middleware import index_version_var
from xmodal.app.schemas import ErrorBody, IndexesResponse, IndexSummary, ModelSummary, ReloadResponse
from xmodal.app.security import AdminDep, ReadDep
from xmodal.app.served import ServedIndex

router = APIRouter(prefix="/v1/indexes", tags=["indexes"])


@router.get("", response_model=IndexesResponse, summary="Every served index (manifest summary) and the models loaded")
async def list_indexes(runtime: ReadyDep, _: ReadDep) -> IndexesResponse:
    models = [
        ModelSummary(
            spec=m.spec, fingerprint=m.encoder.fingerprint, device=str(m.encoder.device), indexes=m.index_names
        )
        for m in runtime.models.values()
    ]
    return IndexesResponse(indexes=[summarize(served) for served in runtime.indexes.values()], models=models)


@router.post(
    "/{name}/reload",
    response_model=ReloadResponse,
    responses={404: {"model": ErrorBody}},
    summary="Look for a newly published version of this index now and hot-swap to it (admin key)",
)
async def reload_index(name: str, runtime: ReadyDep, _: AdminDep) -> ReloadResponse:
    return await reload(pick_index(runtime, name))


async def reload(served: ServedIndex) -> ReloadResponse:
    previous = served.index.version.name
    swapped = await served.reload_if_changed()
    index_version_var.set(served.index.version.name)  # the header names the version served from now on
    return ReloadResponse(index=served.name, swapped=swapped, previous=previous, version=served.index.version.name)


def summarize(served: ServedIndex) -> IndexSummary:
    index = served.index
    manifest = index.manifest
    texts = manifest.texts
    return IndexSummary(
        name=served.name,
        version=index.version.name,
        created_at=manifest.created_at,
        model=manifest.model.spec,
        fingerprint=manifest.model.fingerprint,
        embed_dim=manifest.model.embed_dim,
        metric=manifest.metric,
        images=manifest.images.count,
        texts=texts.count if texts else 0,
        index_key=manifest.images.index_key,
        search_params=manifest.images.search_params,
        texts_index_key=texts.index_key if texts else None,
        texts_search_params=texts.search_params if texts else None,
        skipped=manifest.skipped.total,
        skipped_by_reason=manifest.skipped.by_reason,
        xmodal_version=manifest.xmodal_version,
    )
