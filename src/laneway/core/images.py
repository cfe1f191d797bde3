"""The container image laneway's own Kubernetes objects run by default (the operator, and the
router sidecars in router mode). A module of its own so that the CLI can show it as a default
without importing the Kubernetes renderer."""

DEFAULT_IMAGE = "laneway:dev"
