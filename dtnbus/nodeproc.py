"""Which process runs which node: the lock a node holds on its ledger, and command lines.

A node, however it was started (`cluster start`, by hand, systemd, a container), holds an
exclusive `flock` on `<ledger>.lock` with its pid written inside for as long as it runs.
That gives two guarantees: a second node over the same ledger refuses to start (two
writers would fork one ledger), and `cluster stop` finds every node of a cluster without
trusting a launcher's pid file. `/proc` command lines (`dtnbus node --config F --id K`)
find the nodes whose ledger is elsewhere (another host's path in a shared file) or that
predate the lock. A pid is signalled only if one of the two says it is that node.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path

from dtnbus.errors import LocalError

LOCK_WAIT = 2.0  # a status reader holds the lock shared for microseconds; wait it out


def lock_path(ledger: Path) -> Path:
    return ledger.with_name(ledger.name + ".lock")


class NodeLock:
    """Held by a running node for its whole life (released by the kernel if it dies)."""

    def __init__(self, ledger: Path, node_id: int) -> None:
        self.path = lock_path(ledger)
        self.node_id = node_id
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LocalError(f"node {self.node_id}: cannot create lock file {self.path}: "
                             f"{exc.strerror}") from None
        deadline = time.monotonic() + LOCK_WAIT
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    pid = _read_pid(self.path)
                    raise LocalError(
                        f"node {self.node_id}: ledger {self.path.with_suffix('')} is in use by "
                        f"process {pid if pid else '?'} (a node is already running over it); "
                        "stop that one first ('dtnbus cluster stop')") from None
                time.sleep(0.05)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> NodeLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def lock_holder(ledger: Path) -> int | None:
    """The pid of the live node holding `ledger`'s lock, or None if nobody holds it."""
    path = lock_path(ledger)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return _read_pid(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class NodeCommand:
    pid: int
    config: Path  # as resolved against the process's working directory
    node_id: int


def parse_node_command(argv: list[str], cwd: Path | None) -> tuple[Path, int] | None:
    """(config file, node id) if `argv` runs `dtnbus node --config F --id K`, else None."""
    try:
        start = next(i for i, a in enumerate(argv)
                     if a == "dtnbus" or a.endswith("/dtnbus")
                     or (a == "-m" and i + 1 < len(argv) and argv[i + 1] == "dtnbus"))
    except StopIteration:
        return None
    rest = argv[start + 1:]
    if rest[:1] == ["dtnbus"]:  # `-m dtnbus`
        rest = rest[1:]
    if "node" not in rest:
        return None
    values: dict[str, str] = {}
    args = rest[rest.index("node") + 1:]
    for i, arg in enumerate(args):
        for flag in ("--config", "--id"):
            if arg == flag and i + 1 < len(args):
                values[flag] = args[i + 1]
            elif arg.startswith(flag + "="):
                values[flag] = arg.split("=", 1)[1]
    if "--config" not in values or not values.get("--id", "").isdigit():
        return None
    config = Path(values["--config"])
    if not config.is_absolute():
        if cwd is None:
            return None
        config = cwd / config
    return Path(os.path.normpath(config)), int(values["--id"])


def node_commands() -> list[NodeCommand]:
    """Every live `dtnbus node` process this user can see in /proc."""
    found = []
    me = os.getpid()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            if b"dtnbus" not in (entry / "cmdline").read_bytes():
                continue
            state = (entry / "stat").read_text().rpartition(")")[2].split()[0]
        except OSError:
            continue
        if state in ("Z", "X"):
            continue
        try:
            cwd: Path | None = Path(os.readlink(entry / "cwd"))
        except OSError:
            cwd = None
        parsed = parse_node_command([a for a in argv if a], cwd)
        if parsed is not None:
            found.append(NodeCommand(int(entry.name), parsed[0], parsed[1]))
    return found


def same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def cmdline_of(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a for a in raw.decode(errors="replace").split("\0") if a]
