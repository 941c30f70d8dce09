"""Prometheus ``/metrics`` and the demo page at ``/``."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from ...metrics import CONTENT_TYPE_LATEST
from ...state import ServeState

__all__ = ["STATIC", "operations_router"]

STATIC = Path(__file__).resolve().parents[2] / "static"  # mgsv_sk/serve/static


def operations_router(state: ServeState) -> APIRouter:
    router = APIRouter()

    @router.get("/metrics", tags=["operations"], response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def prometheus() -> Response:
        state.metrics.admitted.set(state.admission.admitted)
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @router.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    return router
