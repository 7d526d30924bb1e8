"""A report's files on disk: written all or nothing, one writer at a time.

:func:`write_files` puts a rendered report (``{file name: bytes}``) into a
directory and removes the previous report's files it does not rewrite. The
directory then holds the old report or the new one, never a mixture, whatever
stops the write:

- an exception at any step (a full disk, a permission): what was placed is
  undone and what was replaced or removed is put back;
- SIGINT or SIGTERM: they wait until the files are all in place (or all put
  back) and then act as they would have (KeyboardInterrupt, termination). This
  needs the main thread, where Python runs signal handlers; from another thread
  the write is still undone on an exception;
- another process writing to the same directory: writers take an exclusive
  lock on the directory itself (``flock``; no lock file is left behind), so
  they run one after the other, and the later one sees the earlier one's
  report before deciding whether it may replace it;
- a process killed outright (SIGKILL, a power cut) can leave temporary files:
  the next writer, holding the lock, removes them.

Temporary files are hidden (a leading dot) and named by :data:`TEMP_SUFFIXES`.
"""

from __future__ import annotations

import contextlib
import os
import signal
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

from ..errors import GradscopeError, UsageError

try:
    import fcntl
except ImportError:  # not POSIX: writers are not locked against each other
    fcntl = None

DEFERRED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM") if hasattr(signal, name))
TEMP_SUFFIXES = (".tmp", ".bak", ".old")  # written, replaced and removed files, while a write is under way
LOCK_TIMEOUT_S = 30.0  # a write takes milliseconds; a writer still holding the lock after this is stuck


def check_writable(directory: Path, option: str = "directory") -> None:
    """UsageError unless ``directory`` is, or can be created as, a writable directory (checked before any work).

    A file is made and removed in the nearest folder that exists: permission bits
    alone pass for root, also on a read-only mount or in /proc. ``option`` is the Python name of the
    setting, which the message names (``directory``, or a callback's ``report_dir``; the command line
    shows it as its flag, ``--out``).
    """
    directory = Path(directory)
    given = f"`{option}={str(directory)!r}`"
    probe = directory
    while not probe.exists():
        if probe.is_symlink():  # a link to nothing: creating the directory would fail only after the work
            raise UsageError(f"{given}: {probe} is a symbolic link to {os.readlink(probe)}, which does "
                             f"not exist; create its target or choose another `{option}`")
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{given}: {probe} is a file, not a directory; choose another `{option}`")
    try:
        with signals_deferred(), tempfile.NamedTemporaryFile(dir=probe, prefix=".gradscope-check-"):
            pass  # made and removed with SIGINT/SIGTERM deferred: a signal cannot leave it behind
    except OSError as exc:
        raise UsageError(f"{given}: cannot create a file in {probe} ({exc.strerror or exc}); "
                         f"choose another `{option}`") from None


class _Stopped(Exception):
    """A deferred signal came while waiting for the lock: give up the write (the signal acts after)."""


@contextlib.contextmanager
def locked(directory: Path, timeout_s: float = LOCK_TIMEOUT_S,
           stop: Callable[[], bool] = lambda: False) -> Iterator[None]:
    """Hold an exclusive lock on ``directory`` (``flock`` on the directory; where there is none, no lock).

    While another process holds it, wait up to ``timeout_s``, or until ``stop()`` says to give up.
    """
    if fcntl is None:
        yield
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if stop():
                    raise _Stopped from None
                if time.monotonic() > deadline:
                    raise UsageError(f"another process has been writing a report into {directory} for "
                                     f"{timeout_s:.0f} s; wait for it to finish, or choose another "
                                     "`directory`") from None
                time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # releases the lock


@contextlib.contextmanager
def signals_deferred() -> Iterator[list[int]]:
    """SIGINT and SIGTERM that arrive inside the block act when it ends, as they would have acted at once;
    the block gets the list of those that came (to stop waiting for something, say)."""
    pending: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield pending
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: pending.append(signum)) for sig in DEFERRED_SIGNALS}
    try:
        yield pending
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: set outside Python
        for sig in dict.fromkeys(pending):
            signal.raise_signal(sig)


def _is_temporary(name: str) -> bool:
    return name.startswith(".") and name.endswith(TEMP_SUFFIXES)


def remove_stale(directory: Path, names: Iterable[str]) -> None:
    """Remove the temporary files a killed writer of these report files left in ``directory`` (under the lock)."""
    prefixes = tuple(f".{name}." for name in names)
    for entry in os.scandir(directory):
        if _is_temporary(entry.name) and entry.name.startswith(prefixes) and entry.is_file(follow_symlinks=False):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)


def write_files(out: Path, rendered: dict[str, bytes], remove: Iterable[str] = ()) -> None:
    """Write every file and remove every file in ``remove``, or do none of it (see the module docstring).

    Temporary files first, then renames, then the removals (each moved aside, not deleted, until all is
    done); if any step fails, what was placed is undone and what was moved aside is put back.
    """
    mask = os.umask(0)  # the only way to read the umask; set back at once
    os.umask(mask)
    temps: list[tuple[str, Path]] = []
    placed: list[tuple[Path, bool, Optional[Path]]] = []  # (target, existed, hard link to what it replaced)
    backups: list[Path] = []
    moved_aside: list[tuple[Path, Path]] = []  # (removed file, where it waits until the write succeeded)
    done = False
    try:
        for name, content in rendered.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=out)
            temps.append((name, Path(tmp)))
            try:
                handle = os.fdopen(fd, "wb")
            except BaseException:
                os.close(fd)
                raise
            with handle:
                os.fchmod(handle.fileno(), 0o666 & ~mask)  # mkstemp's 0600 would hide the report from others
                handle.write(content)
        for name, tmp in temps:
            target = out / name
            backup, existed = None, target.exists()
            if existed:
                backup = out / f".{name}.{uuid.uuid4().hex}.bak"
                try:
                    os.link(target, backup)
                except OSError:
                    backup = None  # no hard links here: the old file cannot be restored, only replaced
            if backup is not None:
                backups.append(backup)
            os.replace(tmp, target)
            placed.append((target, existed, backup))
        for name in remove:
            target = out / name
            aside = out / f".{name}.{uuid.uuid4().hex}.old"
            os.replace(target, aside)
            moved_aside.append((target, aside))
        done = True
    except BaseException:
        for target, aside in reversed(moved_aside):
            with contextlib.suppress(OSError):
                os.replace(aside, target)
        for target, existed, backup in reversed(placed):
            with contextlib.suppress(OSError):
                if backup is not None:
                    os.replace(backup, target)
                elif not existed:
                    target.unlink(missing_ok=True)
        raise
    finally:
        for _, tmp in temps:
            tmp.unlink(missing_ok=True)
        for backup in backups:
            backup.unlink(missing_ok=True)
        if done:  # after a failure, a file that could not be put back stays aside rather than be lost
            for _, aside in moved_aside:
                aside.unlink(missing_ok=True)


def save_files(out: Path, rendered: dict[str, bytes], report_names: Iterable[str], *, force: bool,
               exists_error) -> None:
    """Put ``rendered`` into ``out`` as the one report there (see the module docstring).

    ``report_names``: every file name a report can have (a previous report's files are those of them
    that exist); ``exists_error(existing)`` makes the error for a directory that holds a report when
    ``force`` is off. Checked under the lock, so of two writers racing for one directory the later one
    sees the earlier one's report.
    """
    report_names = list(report_names)
    created = [d for d in (out, *out.parents) if not d.exists()]
    stopped = False
    with signals_deferred() as pending:  # from the first directory made to the last file placed
        try:
            try:
                out.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise GradscopeError(f"cannot create the output directory {out}: {exc.strerror or exc}") from None
            with locked(out, stop=lambda: bool(pending)):
                existing = [name for name in report_names if (out / name).is_file()]
                if existing and not force:
                    raise exists_error(existing)
                remove_stale(out, report_names)
                write_files(out, rendered, remove=[name for name in existing if name not in rendered])
        except BaseException as exc:
            for d in created:  # leaf first; only directories this call made, and only if empty
                try:
                    d.rmdir()
                except OSError:
                    break
            if isinstance(exc, _Stopped):
                stopped = True  # the deferred signal acts as the block ends
            elif isinstance(exc, OSError):
                raise GradscopeError(f"cannot write the report into {out}: {exc.strerror or exc}") from None
            else:
                raise
    if stopped:  # the signal's handler did not end the program: say that nothing was written
        raise GradscopeError(f"the report was not written into {out}: a signal came while waiting for another "
                             "process writing there")
