"""The `laneway` command: a client of the control plane's HTTP API (and the daemon's launcher)."""
