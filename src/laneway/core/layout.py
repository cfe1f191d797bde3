"""Where an environment keeps its state: the `.laneway/` folder beside `laneway.yaml`.

The daemon writes it; every client finds its environment by looking for `.laneway/` in the
current directory or a parent, so several environments run side by side on one machine.

The folder is private to its user (0700, files 0600): the store, the logs and the run reports
hold env values such as database passwords, and the token opens the API. Every long-lived
process that writes there (`laneway up`, the daemon) calls `restrict_umask()` first and
`make_private()` on the folder, which also fixes a folder left by an older version.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

__all__ = ["STATE_DIR_NAME", "StateLayout", "find_project_file", "find_state_dir", "make_private",
           "restrict_umask", "user_umask", "write_private"]

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

    @property
    def dataplane_info(self) -> Path:
        """JSON with the data plane's URL, token and pid, present while it runs."""
        return self.root / "dataplane.json"

    @property
    def dataplane_lock(self) -> Path:
        return self.root / "dataplane.lock"

    @property
    def dataplane_log(self) -> Path:
        return self.root / "dataplane.log"


def find_state_dir(start: Path) -> StateLayout | None:
    """The environment of the nearest folder at or above `start` that has one (`.laneway/`
    with a daemon's files) or is a project (`laneway.yaml`): a project inside another
    project is its own, so `laneway down` there never stops the outer one."""
    for folder in [start, *start.parents]:
        candidate = folder / STATE_DIR_NAME
        if (candidate.is_dir() and (candidate / "token").exists()) or \
                (folder / "laneway.yaml").is_file():
            return StateLayout(candidate)
    return None


def find_project_file(start: Path, name: str = "laneway.yaml") -> Path | None:
    """The nearest `laneway.yaml` at or above `start` (as git finds its repository)."""
    for folder in [start, *start.parents]:
        if (folder / name).is_file():
            return folder / name
    return None


# The umask this process had before `restrict_umask`, kept for the processes started for the
# user (a list, not a `global`, as the umask it mirrors is process-wide state too).
_user_umask: list[int] = []


def restrict_umask() -> int:
    """From now on, every file and folder this process creates is private to its user (umask
    077); returns the umask it had before."""
    previous = os.umask(0o077)
    if not _user_umask:
        _user_umask.append(previous)
    return previous


def user_umask() -> int:
    """The umask of the user who started this process (before `restrict_umask`), for the
    processes laneway starts on their behalf (services, forks, test runs: `umask=` of
    `subprocess`): what they write into the user's tree is not laneway's state, and a file
    made 0600 there breaks, for example, a container image built from it."""
    if _user_umask:
        return _user_umask[0]
    current = os.umask(0o077)
    os.umask(current)
    return current


def make_private(root: Path) -> list[Path]:
    """Create `root` private (0700) if it is missing, or make an existing one private: the
    folder and every folder in it 0700, every other entry without group and other permissions
    (0644 → 0600; an owner's execute bit is kept). Symbolic links are neither followed nor
    changed. Returns what could not be changed (not ours: someone ran laneway as another user)."""
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    # A `.laneway` that is itself a link is where its user chose to keep the state: that is
    # made private; links inside it are not followed.
    top = root.resolve()
    failed: list[Path] = []
    _restrict(top, None, 0o700, failed, root)
    # fwalk holds each folder open and names entries relative to it: a folder swapped for a
    # symbolic link while we walk is not followed out of `.laneway/`.
    for folder, dirs, files, dir_fd in os.fwalk(top, follow_symlinks=False):
        here = Path(folder)
        for name in dirs:
            _restrict(name, dir_fd, 0o700, failed, here / name)
        for name in files:
            _restrict(name, dir_fd, None, failed, here / name)
    return failed


def _restrict(name: str | Path, dir_fd: int | None, mode: int | None, failed: list[Path],
              shown: Path) -> None:
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:  # removed while we walk: nothing left to protect
        return
    if stat.S_ISLNK(info.st_mode):
        return
    current = stat.S_IMODE(info.st_mode)
    wanted = mode if mode is not None else current & 0o700
    if current == wanted:
        return
    with contextlib.suppress(FileNotFoundError):
        try:
            _chmod_no_follow(name, wanted, dir_fd)
        except PermissionError:
            failed.append(shown)


def _chmod_no_follow(name: str | Path, mode: int, dir_fd: int | None) -> None:
    try:
        os.chmod(name, mode, dir_fd=dir_fd, follow_symlinks=False)
    except NotImplementedError:
        # Python without lchmod: fchmodat(AT_SYMLINK_NOFOLLOW) is unavailable, so the entry
        # is changed by name; it was not a symbolic link a moment ago (see the stat above).
        os.chmod(name, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        os.chmod(name, mode, dir_fd=dir_fd)  # glibc < 2.32: same as above


def write_private(path: Path, text: str) -> None:
    """Write `path` (0600) so that a reader sees the old file or the new one, never half of it:
    clients read `api.json` the moment it appears."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
