"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (KServe v2)
on a port of its own, sharing the HTTP app's model, queue and per-client limits
(:func:`start_grpc`). The messages are generated from ``predict_v2.proto``."""

from mgsv_sk._extras import require

for _module in ("grpc", "google.protobuf"):
    require(_module, "the gRPC service (mgsv-sk serve --grpc-port)")

from .service import GRPC_SERVICE, start_grpc  # noqa: E402

__all__ = ["GRPC_SERVICE", "start_grpc"]
