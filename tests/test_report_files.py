"""A report's files: all or nothing under SIGINT, SIGTERM and errors at every step, one writer at a time."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from gradscope.errors import UsageError
from gradscope.report import Report, check_output
from gradscope.report import files as report_files

import report_fixtures as rf

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or not hasattr(signal, "SIGTERM"), reason="needs POSIX")


@pytest.fixture(scope="module")
def demo_report():
    return rf.demo_report(depth=4)

# Runs in a child process: for each kill point k, a fork replaces the old report in WORK with the new one
# (json and md only: the old report's html and csv must go) and sends itself the signal at the k-th line
# that gradscope/report/files.py executes. The parent then reads what the directory holds.
DRIVER = r"""
import json, os, shutil, signal, sys
from pathlib import Path
import gradscope.report.files as files
from gradscope.report import RENDERERS, Report, output_names

pristine, work, new_json, sig_name, wanted = sys.argv[1:6]
sig = getattr(signal, sig_name)
new = Report.load(new_json)
rendered = {name: content for fmt in ("json", "md") for name, content in RENDERERS[fmt](new).items()}
names = [name for fmt in RENDERERS for name in output_names(fmt)]
source = os.path.abspath(files.__file__)
counted = work + ".lines"

def save():  # what Report.save does once the report is rendered
    files.check_writable(Path(work))
    files.save_files(Path(work), rendered, names, force=True, exists_error=RuntimeError)

def contents(d):
    return {p.name: p.read_bytes() for p in sorted(Path(d).iterdir())}

def attempt(kill_at):
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(pristine, work)
    pid = os.fork()
    if pid == 0:
        lines = [0]
        def tracer(frame, event, arg):
            if frame.f_code.co_filename != source:
                return None
            if event == "line":
                lines[0] += 1
                if lines[0] == kill_at:
                    os.kill(os.getpid(), sig)
            return tracer
        sys.settrace(tracer)
        try:
            save()
        except BaseException:
            os._exit(3)
        sys.settrace(None)
        Path(counted).write_text(str(lines[0]))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    return status, contents(work)

_, fresh = attempt(0)
total = int(Path(counted).read_text())  # lines of files.py one write executes
wanted = min(int(wanted), total)
points = sorted({1 + round(i * (total - 1) / (wanted - 1)) for i in range(wanted)})
old = contents(pristine)
outcomes = {"lines": total, "points": len(points), "old": 0, "new": 0, "bad": [], "signalled": 0}
for k in points:
    status, now = attempt(k)
    outcomes["signalled"] += os.WIFSIGNALED(status) or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 3)
    if now == old:
        outcomes["old"] += 1
    elif now == fresh:
        outcomes["new"] += 1
    else:
        outcomes["bad"].append({"kill_at": k, "files": sorted(now), "status": status})
print(json.dumps(outcomes))
"""


@pytest.fixture
def two_reports(demo_report, tmp_path):
    """The old report (json, html, md, csv) in ``pristine`` and the new one, a changed copy, as a json file."""
    pristine = tmp_path / "pristine"
    demo_report.save(pristine, formats="json,html,md,csv")
    new = Report(**{**demo_report.__dict__, "meta": {**demo_report.meta, "model": "the new one"}})
    new.save(tmp_path / "new", formats="json")
    return pristine, tmp_path / "new" / "report.json"


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_a_signal_at_any_line_of_a_forced_replace_leaves_the_old_or_the_new_report_and_no_other_file(
        two_reports, tmp_path, sig):
    pristine, new_json = two_reports
    run = subprocess.run([sys.executable, "-c", DRIVER, str(pristine), str(tmp_path / "work"), str(new_json), sig,
                          "60"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    outcomes = json.loads(run.stdout)
    assert outcomes["bad"] == []
    assert outcomes["lines"] > 60 and outcomes["points"] == 60  # kill points spread over every line of the write
    assert outcomes["signalled"] == outcomes["points"]  # each run was stopped by its signal: none ran on
    assert outcomes["old"] > 0 and outcomes["new"] > 0  # signals before the write and during it


def test_a_second_writer_waits_for_the_first_and_then_sees_its_report(demo_report, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    results = []

    def second():
        try:
            demo_report.save(out, formats="json")
            results.append("written")
        except UsageError as exc:
            results.append(str(exc))

    with report_files.locked(out):  # the first writer, in the middle of its write
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.5)
        assert thread.is_alive()  # waiting for the lock, not writing beside the first
        (out / "report.md").write_text("the first writer's report")
    thread.join(timeout=30)
    assert results and results[0].startswith(f"{out / 'report.md'} already exists; pass `force=True`")
    assert sorted(p.name for p in out.iterdir()) == ["report.md"]


def test_a_writer_holding_the_lock_too_long_is_reported_not_waited_for_forever(tmp_path):
    with report_files.locked(tmp_path):
        with pytest.raises(UsageError, match="another process has been writing a report into .* for 0 s"):
            with report_files.locked(tmp_path, timeout_s=0.1):
                pass


def test_temporaries_a_killed_writer_left_are_removed_by_the_next_write(demo_report, tmp_path):
    demo_report.save(tmp_path, formats="json")
    stale = [tmp_path / ".report.json.abc123.tmp", tmp_path / ".report.html.0f0f.bak", tmp_path / ".report.md.99.old"]
    for path in stale:
        path.write_text("left by a writer killed with SIGKILL")
    keep = [tmp_path / ".notes.tmp", tmp_path / "mine.old"]  # not a report file's temporary: not ours to remove
    for path in keep:
        path.write_text("the user's")
    demo_report.save(tmp_path, formats="json", force=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["report.json", *(p.name for p in keep)])


def test_signals_deferred_acts_on_a_signal_when_the_block_ends():
    seen = []
    previous = signal.signal(signal.SIGUSR1, lambda *a: seen.append("handler"))
    try:
        with report_files.signals_deferred():
            pass  # SIGUSR1 is not deferred: the handler stays as it was
        assert signal.getsignal(signal.SIGUSR1) is not signal.SIG_DFL
        with pytest.raises(KeyboardInterrupt):
            with report_files.signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)  # time for the handler to run: it only records
                seen.append("block went on")
        assert seen == ["block went on"]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_an_out_that_is_a_link_to_nothing_is_refused_before_the_work(tmp_path):
    link = tmp_path / "out"
    link.symlink_to(tmp_path / "missing" / "target")
    with pytest.raises(UsageError, match=r"^`directory='.*out'`: .*out is a symbolic link to .*missing/target, which "
                                         r"does not exist; create its target or choose another `directory`$"):
        check_output(link)


@pytest.mark.slow
def test_sigterm_ends_the_command_like_ctrl_c_with_exit_143_and_nothing_half_written(tmp_path):
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "gradscope", "demo", "--depth", "400", "--width", "512",
                             "--out", str(out)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    try:
        first = proc.stderr.readline()  # the demo has started measuring
        assert "demo:" in first, first
        proc.send_signal(signal.SIGTERM)
        _, rest = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143
    assert rest.rstrip().endswith("gradscope: terminated")
    assert "Traceback" not in rest
    assert not out.exists() or list(out.iterdir()) == []


STARTUP = r"""
import os, signal, sys
sys.argv[0] = os.path.join(os.path.dirname(sys.executable), "gradscope")  # as the console script runs
kill_at, lines = int(sys.argv[1]), [0]
watched = ("gradscope/_ext.py", "gradscope/stats.py", "gradscope/_reference.py", "gradscope/cli.py",
           "gradscope/variants.py")

def tracer(frame, event, arg):
    if not frame.f_code.co_filename.endswith(watched):
        return None
    if event == "line":
        lines[0] += 1
        if lines[0] == kill_at:
            os.kill(os.getpid(), signal.SIGINT)
    return tracer

sys.settrace(tracer)
from gradscope.__main__ import run  # the console script's entry
if kill_at == 0:
    from gradscope.cli import build_parser
    build_parser()  # what run does first: the lines until the command runs
    print("started after", lines[0], "lines")
    sys.exit(0)
sys.exit(run(["info", "--json"]))
"""


@pytest.mark.slow
def test_ctrl_c_while_the_command_starts_exits_130_without_a_traceback():
    full = subprocess.run([sys.executable, "-c", STARTUP, "0"], capture_output=True, text=True, timeout=120)
    total = int(full.stdout.split()[-2])
    assert total > 20
    for kill_at in (1, total // 3, 2 * total // 3, total):
        run = subprocess.run([sys.executable, "-c", STARTUP, str(kill_at)], capture_output=True, text=True,
                             timeout=120)
        assert (run.returncode, run.stderr) == (130, "gradscope: interrupted\n"), kill_at
