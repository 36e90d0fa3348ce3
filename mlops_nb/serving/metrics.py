"""The project's Prometheus metrics (names from `mlops_nb.contracts.METRICS`), shown on BentoML's /metrics."""

from __future__ import annotations

from mlops_nb.contracts import METRICS

__all__ = ["ServingMetrics"]


class ServingMetrics:
    """Created in the worker after BentoML set up Prometheus' multiprocess folder (so every worker is counted)."""

    def __init__(self) -> None:
        import prometheus_client as prom

        self.requests = prom.Counter(METRICS["requests"], "answered requests by route and HTTP status",
                                     ["route", "status"])
        self.latency = prom.Histogram(METRICS["latency"], "time from request to answer, by route", ["route"],
                                      buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5))
        self.rows = prom.Counter(METRICS["rows"], "rows scored")
        self.log_dropped = prom.Counter(METRICS["log_dropped"], "prediction-log records dropped (requests were "
                                                                "answered)")
        self.rejected = prom.Counter(METRICS["rejected"], "requests answered 503 by back-pressure")
        self.shadow = prom.Counter(METRICS["shadow"], "requests offered to the shadow challenger, by outcome "
                                                      "(scored, dropped: its queue was full, failed)", ["outcome"])
        self.scored = prom.Counter(METRICS["scored"], "requests routed to a model version, by version and role "
                                                      "(champion, canary)", ["model_version", "role"])
        self.fallback = prom.Counter(METRICS["fallback"], "requests whose routed version failed, by reason (error, "
                                                          "nonfinite, timeout) and outcome (answered by the previous "
                                                          "champion, or refused with 503)", ["reason", "outcome"])
        self.canary_rollbacks = prom.Counter(METRICS["canary_rollbacks"], "times this process stopped routing to "
                                                                          "its canary (rolled back)")
        self.model = prom.Gauge(METRICS["model"], "the model version served and the ONNX Runtime provider in use",
                                ["model_name", "model_version", "variant", "provider"], multiprocess_mode="liveall")
