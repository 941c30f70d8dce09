"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` (KServe v2)
on a port of its own, sharing the HTTP app's model, queue and per-client limits
(:func:`start_grpc`). The messages are generated from ``predict_v2.proto``."""

from .service import GRPC_SERVICE, start_grpc

__all__ = ["GRPC_SERVICE", "start_grpc"]
