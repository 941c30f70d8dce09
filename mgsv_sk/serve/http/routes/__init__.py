"""The app's routers, one per concern: the Open Inference Protocol (:mod:`.oip`), video
uploads (:mod:`.uploads`), moment audio (:mod:`.audio`), metrics and the page
(:mod:`.operations`)."""

from .audio import audio_router
from .oip import oip_router
from .operations import STATIC, operations_router
from .uploads import uploads_router

__all__ = ["STATIC", "audio_router", "oip_router", "operations_router", "uploads_router"]
