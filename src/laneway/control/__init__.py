"""The control plane: the HTTP API, the store, the reconciler, the hop log and the audit log.

It depends on the `Store` and `Runtime` interfaces only; the daemon wires concrete ones in.
"""
