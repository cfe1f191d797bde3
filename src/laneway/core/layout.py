"""Where an environment keeps its state: the `.laneway/` folder beside `laneway.yaml`.

The daemon writes it; every client finds its environment by looking for `.laneway/` in the
current directory or a parent, so several environments run side by side on one machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["STATE_DIR_NAME", "StateLayout", "find_state_dir"]

STATE_DIR_NAME = ".laneway"


@dataclass(frozen=True, slots=True)
class StateLayout:
    root: Path

    @property
    def token(self) -> Path:
        return self.root / "token"

    @property
    def api(self) -> Path:
        """JSON with the API's URL and the daemon's pid, present while the daemon runs."""
        return self.root / "api.json"

    @property
    def database(self) -> Path:
        return self.root / "state.db"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def lock(self) -> Path:
        return self.root / "daemon.lock"


def find_state_dir(start: Path) -> StateLayout | None:
    """The nearest `.laneway/` at or above `start` that holds a daemon's files."""
    for folder in [start, *start.parents]:
        candidate = folder / STATE_DIR_NAME
        if candidate.is_dir() and (candidate / "token").exists():
            return StateLayout(candidate)
    return None
