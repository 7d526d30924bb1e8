"""The result of an analysis as one tidy object, its formats, and its files.

The package's rooms, each importing only those below it:

- :mod:`.model`: :class:`Report` (what a report holds, its pure accessors, its JSON-ready form) and
  :data:`SCHEMA`; its ``save`` and ``load`` hand the work to :mod:`.storage`;
- :mod:`.storage`: a report on disk: which files make one, :func:`check_output` before the work, saving
  and reading;
- :mod:`.files`: writing files all or nothing, one writer at a time; :func:`check_writable`;
- :mod:`.formats`: format name -> renderer (:data:`RENDERERS`), the files each can write;
- the renderers: :mod:`.tables` (csv, pandas), :mod:`.markdown`, :mod:`.html`, :mod:`.svg` and :mod:`.mpl`
  (plots drawn from the specs in :mod:`.plots`), :mod:`.terminal`; with :mod:`.fmt` and :mod:`.training`,
  the wording they share;
- :mod:`.validate`: is this JSON a report? (used when reading).

Renderers and storage take a report as an argument and never import :mod:`.model`: the model sits on top,
so there is no cycle. Importing the package imports every renderer but no optional dependency:
matplotlib and pandas are imported only when a png is drawn or a DataFrame made.
"""

from __future__ import annotations

from .files import check_writable
from .formats import DEFAULT_FORMATS, JSON_NAME, RENDERERS, check_formats, output_names
from .model import OPTIONAL_SECTIONS, SCHEMA, Report
from .storage import check_output, report_files

__all__ = [
    "DEFAULT_FORMATS", "JSON_NAME", "OPTIONAL_SECTIONS", "RENDERERS", "SCHEMA", "Report", "check_formats",
    "check_output", "check_writable", "output_names", "report_files",
]
