"""Spreading calls over kvd replicas with gRPC's own machinery: no home-made balancer.

A channel to ``ipv4:host1:port1,host2:port2`` (or ``dns:///kvserve-pods:8500``, a headless Service) with the
``round_robin`` policy sends each call to the next ready replica; a retry policy re-sends a call that failed
UNAVAILABLE (a replica that died or is draining) to another one, so the caller never sees it.
"""

from __future__ import annotations

import json
from typing import Sequence

# inference.GRPCInferenceService calls are idempotent reads; kvserve.v1 uploads are not and are never retried.
RETRIED_SERVICES = ("inference.GRPCInferenceService", "grpc.health.v1.Health")


def service_config(max_attempts: int = 5, initial_backoff_s: float = 0.05, max_backoff_s: float = 1.0) -> str:
    """gRPC service config JSON: round_robin, and retries on UNAVAILABLE for the inference service."""
    retry = {"maxAttempts": max_attempts, "initialBackoff": f"{initial_backoff_s}s", "maxBackoff": f"{max_backoff_s}s",
             "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
    return json.dumps({"loadBalancingConfig": [{"round_robin": {}}],
                       "methodConfig": [{"name": [{"service": s} for s in RETRIED_SERVICES], "retryPolicy": retry}]})


def replicas_target(addresses: Sequence[str]) -> str:
    """One target naming every replica (``host:port`` each, IPv4), for a channel that balances over them."""
    if not addresses:
        raise ValueError("no replica addresses")
    return "ipv4:" + ",".join(addresses)


def channel_options(max_attempts: int = 5) -> list[tuple[str, object]]:
    """Channel options that turn the balancing and retries on (pass them with the channel's other options)."""
    return [("grpc.service_config", service_config(max_attempts)), ("grpc.enable_retries", 1)]
