# The image that `laneway k8s install --image` runs: the operator (kopf) and, in router mode,
# the router sidecar (`python -m laneway.router`). Not built in CI (no Docker engine there).
#   docker build -t registry.example/laneway:0.1.0 .
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install --no-cache-dir '.[kubernetes]' && cd / && rm -rf /build
WORKDIR /
# The uid the manifests run as (runAsNonRoot, runAsUser 10001).
USER 10001
CMD ["kopf", "run", "--standalone", "--all-namespaces", "-m", "laneway.runtime.kubernetes.handlers"]
