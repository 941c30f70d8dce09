"""Prometheus metrics of one app, in its own registry (two apps in one process, as in the
tests, do not share counters)."""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    """The service's counters, gauges and histograms (names prefixed ``mgsv_``)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("mgsv_http_requests", "HTTP requests answered, by route "
                                "template, method and status code",
                                ["route", "method", "code"], registry=r)
        self.latency = Histogram("mgsv_http_request_seconds", "Time to answer a request, by "
                                 "route template", ["route"], buckets=_LATENCY_BUCKETS,
                                 registry=r)
        self.stages = Histogram("mgsv_stage_seconds", "Time of each stage of an inference "
                                "request (queue, upload, decode, rank)", ["stage"],
                                buckets=_LATENCY_BUCKETS, registry=r)
        self.rejected = Counter("mgsv_rejected", "Requests refused before running, by reason "
                                "(overloaded, not_ready, client_share, upload_room, body_room, "
                                "audio_room; "
                                "408 and 413 are in the requests' codes)", ["reason"], registry=r)
        self.paced = Counter("mgsv_paced_requests", "Requests that waited for their "
                             "client's pace (--max-client-rate) before being read or run",
                             registry=r)
        self.paced_seconds = Counter("mgsv_paced_seconds", "Seconds the paced requests "
                                     "waited, all together", registry=r)
        self.upload_bytes = Counter("mgsv_upload_bytes", "Bytes of video uploads received",
                                    registry=r)
        self.in_flight = Gauge("mgsv_requests_in_flight", "HTTP requests being answered",
                               registry=r)
        self.admitted = Gauge("mgsv_admitted_requests", "Inference requests admitted (running "
                              "or waiting for a thread)", registry=r)
        self.ready = Gauge("mgsv_model_ready", "1 once the bundle is loaded", registry=r)
        self.tracks = Gauge("mgsv_catalogue_tracks", "Tracks in the served catalogue",
                            registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
