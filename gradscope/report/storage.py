"""A report on disk: the files it is made of, what is checked before the work, saving it and reading it.

Writing is all or nothing (:mod:`.files`): every file is rendered in memory
(:mod:`.formats`), then written under a lock on the directory with
SIGINT/SIGTERM deferred, so the directory holds the old report or the new one
whatever stops it. A directory holds one report: one already there is not
replaced unless ``force=True``, and then its files that the new report does not
rewrite are removed with the same care. Reading is bounded in size and returns
the parsed JSON; :meth:`~.model.Report.from_dict` then checks its structure.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

from ..errors import UsageError
from ..limits import MAX_REPORT_BYTES, bound, read_bounded
from .files import check_writable, save_files
from .formats import DEFAULT_FORMATS, JSON_NAME, RENDERERS, check_formats, output_names


def report_files(directory) -> list[str]:
    """Names of the files in ``directory`` that a report is made of (any format's), in format order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    return [name for fmt in RENDERERS for name in output_names(fmt) if (directory / name).is_file()]


def _exists_message(directory: Path, existing: list[str]) -> str:
    return (f"{directory / existing[0]} already exists; pass `force=True` to replace the report in {directory} "
            "(all its files), or choose another `directory`")


def check_output(directory, formats: Iterable[str] | str = DEFAULT_FORMATS, *, force: bool = False) -> tuple[str, ...]:
    """Everything :meth:`~.model.Report.save` would refuse, checked before an analysis runs; returns the formats."""
    names = check_formats(formats)
    check_writable(Path(directory))
    existing = report_files(directory)
    if existing and not force:
        raise UsageError(_exists_message(Path(directory), existing))
    return names


def save_report(report, directory, formats: Iterable[str] | str = DEFAULT_FORMATS, *,
                force: bool = False) -> list[Path]:
    """What :meth:`~.model.Report.save` does (see there): render every file, then write them all or none."""
    formats = check_formats(formats)
    out = Path(directory)
    check_writable(out)
    rendered = {name: content for fmt in formats for name, content in RENDERERS[fmt](report).items()}
    existing = report_files(out)
    if existing and not force:  # before taking the lock too: the common case fails without touching the disk
        raise UsageError(_exists_message(out, existing))
    save_files(out, rendered, (name for fmt in RENDERERS for name in output_names(fmt)), force=force,
               exists_error=lambda names: UsageError(_exists_message(out, names)))
    return [out / name for name in rendered]


def read_report_json(path) -> tuple[object, Path]:
    """The parsed JSON of the report at ``path`` (a ``report.json`` file, or the directory holding one), and
    the file it was read from; UsageError when it cannot be read or is not JSON."""
    path = Path(path)
    if path.is_dir():
        if not (path / JSON_NAME).exists() and report_files(path):
            raise UsageError(f"{path} holds a report without {JSON_NAME} (written without the json format); "
                             "gradscope reads reports from their json: write it with `formats='json'`")
        path = path / JSON_NAME
    try:
        text = read_bounded(path, "report", bound(MAX_REPORT_BYTES, "GRADSCOPE_MAX_REPORT_MB"),
                            "GRADSCOPE_MAX_REPORT_MB")
        data = json.loads(text.decode("utf-8"))
    except OSError as exc:
        raise UsageError(f"cannot read report {path}: {exc.strerror or exc}") from None
    except ValueError as exc:  # UnicodeDecodeError included
        raise UsageError(f"{path} is not a gradscope report: it is not JSON ({exc})") from None
    except RecursionError:
        raise UsageError(f"{path} is not a gradscope report: its JSON is nested too deeply to be one") from None
    return data, path
