"""A gRPC server with only the standard health service (grpcio-health-checking), on $PORT: the
process the local runtime supervises with `health: grpc:NAME` in the tests. $SERVING lists,
comma-separated, the service names it reports SERVING; others are unknown to it."""

from __future__ import annotations

import os
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


def main() -> None:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    for name in filter(None, os.environ.get("SERVING", "").split(",")):
        servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{os.environ['PORT']}")
    server.start()
    server.wait_for_termination()  # SIGTERM ends the process


if __name__ == "__main__":
    main()
