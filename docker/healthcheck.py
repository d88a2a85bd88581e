"""Container health check for every Footfall service (Docker HEALTHCHECK, docker-compose).

Exit status 0 when the service answers, 1 otherwise; it needs nothing but the Python that
runs the services (no curl in the slim image).

Usage:
    python /app/healthcheck.py                              # find the service from PID 1's command
    python /app/healthcheck.py http://127.0.0.1:9101/healthz
    python /app/healthcheck.py grpc://127.0.0.1:50051       # grpc.health.v1, service ""

Why auto-detection: one image runs every service, so the image-level HEALTHCHECK cannot
name a port; it reads the command (``footfall-ingest`` ...) and the port settings.

Example:
    >>> probe_for(["/sbin/docker-init", "--", "/opt/venv/bin/footfall-ingest"], {})
    'http://127.0.0.1:9101/healthz'
    >>> probe_for(["footfall-inference"], {"FOOTFALL_GRPC_PORT": "6000"})
    'grpc://127.0.0.1:6000'
    >>> probe_for(["footfall-inference"], {"FOOTFALL_GRPC_HEALTH_PORT": "50052"})  # TLS on the main port
    'grpc://127.0.0.1:50052'
    >>> probe_for(["footfall-aggregator"], {"FOOTFALL_METRICS_PORT": "9200"})
    'http://127.0.0.1:9200/healthz'
    >>> probe_for(["/opt/venv/bin/python", "-m", "streamlit", "run", "/app/dashboard/app.py"], {})
    'http://127.0.0.1:8501/_stcore/health'
"""

from __future__ import annotations

import os
import sys
import urllib.request
from pathlib import Path

TIMEOUT_S = 3.0

# Default metrics ports of the services (service conventions; FOOTFALL_METRICS_PORT=0 means these).
METRICS_PORTS = {"footfall-ingest": 9101, "footfall-inference": 9102, "footfall-aggregator": 9103}
# `python -m module` spellings of the same services.
MODULES = {
    "footfall.ingest.service": "footfall-ingest",
    "footfall.inference.server": "footfall-inference",
    "footfall.aggregator.service": "footfall-aggregator",
    "footfall.dashboard_launcher": "footfall-dashboard",
    # footfall-dashboard exec()s Streamlit, which then is the container's main process.
    "streamlit": "footfall-dashboard",
}


def service_in(argv: list[str]) -> str | None:
    """The Footfall service a command line starts, or None."""
    for arg in argv:
        name = Path(arg).name
        if name.startswith("footfall-"):
            return name
        if arg in MODULES:
            return MODULES[arg]
    return None


def probe_for(argv: list[str], env: dict[str, str]) -> str | None:
    """The URL to probe for the service ``argv`` starts (None: nothing long-running to check)."""
    service = service_in(argv)
    if service == "footfall-inference":
        # gRPC health is the inference worker's readiness: the model is loaded and serving. With
        # TLS on the main port, the plain-text health-only port answers it.
        port = int(env.get("FOOTFALL_GRPC_HEALTH_PORT") or 0) or int(env.get("FOOTFALL_GRPC_PORT") or 50051)
        return f"grpc://127.0.0.1:{port}"
    if service in METRICS_PORTS:
        port = int(env.get("FOOTFALL_METRICS_PORT") or 0) or METRICS_PORTS[service]
        return f"http://127.0.0.1:{port}/healthz"
    if service == "footfall-dashboard":
        return f"http://127.0.0.1:{int(env.get('FOOTFALL_DASHBOARD_PORT') or 8501)}/_stcore/health"
    return None


def check_http(url: str, timeout: float = TIMEOUT_S) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (loopback only)
            return 200 <= response.status < 300
    except OSError:
        return False


def check_grpc(target: str, service: str = "", timeout: float = TIMEOUT_S) -> bool:
    # Imported here: the HTTP services' check should not pay for loading grpc.
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(target) as channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout)
        except grpc.RpcError:
            return False
    return reply.status == health_pb2.HealthCheckResponse.SERVING


def check(url: str) -> bool:
    """Probe ``url`` (http://, https:// or grpc://host:port[/service])."""
    if url.startswith("grpc://"):
        target, _, service = url.removeprefix("grpc://").partition("/")
        return check_grpc(target, service)
    return check_http(url)


def pid1_argv() -> list[str]:
    try:
        return [a for a in Path("/proc/1/cmdline").read_bytes().decode().split("\0") if a]
    except OSError:
        return []


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    url = args[0] if args else probe_for(pid1_argv(), dict(os.environ))
    if url is None:
        return 0  # one-shot commands (footfall-migrate, a shell): nothing to probe
    healthy = check(url)
    if not healthy:
        print(f"unhealthy: {url}", file=sys.stderr)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
