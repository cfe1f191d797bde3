"""Runtimes: what starts and stops processes for the control plane (`core.runtime.Runtime`).

`local` supervises processes on this machine; `memory` is the in-memory implementation that the
reconciler's tests use.
"""
