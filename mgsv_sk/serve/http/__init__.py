"""The service's HTTP transport: the routers (OIP, uploads, moment audio, operations),
the pure ASGI middleware, request bodies read as a bounded stage of their own, video
uploads streamed to disk, the request and response schemas, and uvicorn with the
connection guards. The gRPC transport is its sibling, :mod:`mgsv_sk.serve.grpc`; both
call the transport-free OIP of :mod:`mgsv_sk.serve.oip` on the state of
:mod:`mgsv_sk.serve.state`."""
