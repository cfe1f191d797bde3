"""The Kubernetes side: an operator (kopf) that executes the pure plans of
`laneway.core.kubernetes.plan` against a cluster through one narrow interface (`Cluster`)."""
