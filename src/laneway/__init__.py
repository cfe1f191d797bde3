"""laneway: request-level sandboxes on a shared, running baseline of microservices.

The package mirrors DESIGN.md: `core` holds the pure logic (baggage parsing, routing decisions,
specs, reconcile planning), `router` is the data plane, `control` the control plane (API, store,
reconciler), `runtime` starts and stops processes, `daemon` wires them into one process, and `cli`
is a client of the control-plane HTTP API.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
