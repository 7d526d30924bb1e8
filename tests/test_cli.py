"""`gradscope analyze` and `gradscope demo` through the command line: output, files, exit codes."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gradscope.cli import main

import helpers_models as hm

REPO = Path(__file__).resolve().parents[1]
FAST = ["--batch-size", "2", "--seq-len", "16", "--device", "cpu"]


def run_module(*args, env=None):
    """``python -m gradscope ARGS`` in a fresh interpreter: the real entry point."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", **(env or {})}
    environment.pop("GRADSCOPE_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "gradscope", *args], capture_output=True, text=True,
                          env=environment, timeout=120)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    return hm.save_tiny_bert(tmp_path_factory.mktemp("cli-bert"))


@pytest.mark.slow
def test_demo_through_the_entry_point():
    result = run_module("demo", "--depth", "20")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    table = {line.split()[0]: line.split()[1] for line in lines[5:11]}  # after title, inputs, blank, header, rule
    assert table == {"sigmoid": "vanishing", "tanh": "vanishing", "relu": "vanishing", "relu-he": "healthy",
                     "batchnorm": "healthy", "residual": "healthy"}
    assert "fix: replace sigmoid with a ReLU-family activation" in result.stdout
    assert "measuring sigmoid" in result.stderr and "measuring" not in result.stdout  # progress on stderr


@pytest.mark.slow
def test_unreachable_hub_id_exits_3_with_one_line():
    result = run_module("analyze", "nobody-here/no-such-model", "--device", "cpu")
    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("gradscope: error:")]
    assert len(errors) == 1
    assert "'nobody-here/no-such-model'" in errors[0] and "local directory" in errors[0]


def test_analyze_writes_the_report_and_prints_the_summary(tiny_bert, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", str(tiny_bert), *FAST, "--out", str(out), "--what-if", "sigmoid,no-residual"]) == 0
    captured = capsys.readouterr()
    data = json.loads((out / "report.json").read_text())
    assert data["schema"] == "gradscope.report/1"
    assert [v["name"] for v in data["variants"]] == ["pretrained", "scratch", "shallow", "sigmoid", "no-residual"]
    assert data["meta"]["arguments"]["what_if"] == "sigmoid,no-residual"
    for name in ("pretrained", "scratch", "shallow", "sigmoid", "no-residual"):
        assert any(line.startswith(name + " ") for line in captured.out.splitlines())
    assert "pretrained / scratch:" in captured.out
    assert "loading" in captured.err and "wrote" in captured.err

    # A second run refuses to overwrite before doing any work; --force overwrites.
    assert main(["analyze", str(tiny_bert), *FAST, "--out", str(out), "--baselines", "pretrained"]) == 2
    captured = capsys.readouterr()
    assert "already exists; pass --force" in captured.err and "loading" not in captured.err
    assert main(["analyze", str(tiny_bert), *FAST, "--out", str(out), "--baselines", "pretrained", "--force"]) == 0
    assert [v["name"] for v in json.loads((out / "report.json").read_text())["variants"]] == ["pretrained"]


def test_text_file_replaces_the_built_in_corpus(tiny_bert, tmp_path, capsys):
    text = tmp_path / "words.txt"
    text.write_text("Gradients flow backwards through every layer of the network.\n")
    out = tmp_path / "out"
    assert main(["analyze", str(tiny_bert), *FAST, "--baselines", "pretrained", "--text", str(text),
                 "--out", str(out)]) == 0
    assert f"text file {text}" in json.loads((out / "report.json").read_text())["meta"]["inputs"]


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--format", "json,pdf"], "--format pdf: unknown format"),
        (["--what-if", "swish"], "--what-if: unknown variant swish"),
        (["--baselines", "none"], "no variants to run"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--text", "/no/such/file.txt"], "--text /no/such/file.txt: cannot read it"),
        (["--what-if", "no-norm", "--dtype", "float8"], "--dtype float8"),
    ],
)
def test_bad_usage_exits_2_with_a_message(tiny_bert, tmp_path, capsys, extra, message):
    out = tmp_path / "out"
    assert main(["analyze", str(tiny_bert), *FAST, "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("gradscope: error:") == 1
    assert not out.exists()  # nothing half-written


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--what-if", "sigmoid,no_norm"], "--what-if: unknown variant no_norm (did you mean no-norm?); choose from "
                                           "sigmoid, tanh, no-norm, no-residual, xavier, he"),
        (["--baselines", "pretrain,scratch"], "--baselines: unknown variant pretrain (did you mean pretrained?); "
                                              "choose from pretrained, scratch, shallow"),
        (["--format", "json,htm"], "--format htm: unknown format (did you mean html?); choose from json, csv, md, "
                                   "html, svg, png"),
        (["--what-if", "swish"], "--what-if: unknown variant swish; choose from sigmoid, tanh, no-norm, no-residual, "
                                 "xavier, he"),  # nothing close: no guess
    ],
)
def test_a_mistyped_name_gets_its_close_match(tmp_path, capsys, extra, message):
    assert main(["analyze", "some-model", "--out", str(tmp_path / "out"), *extra]) == 2  # refused before loading
    assert capsys.readouterr().err == f"gradscope: error: {message}\n"


@pytest.mark.parametrize(
    "argv, usage, error",
    [
        (["analyze", "m", "--ofline"], "usage: gradscope analyze [-h]",
         "gradscope analyze: error: unrecognized arguments: --ofline (did you mean --offline?)"),
        (["analyze", "--what_if=he", "m", "extra"], "usage: gradscope analyze [-h]",
         "gradscope analyze: error: unrecognized arguments: --what_if=he (did you mean --what-if?) extra"),
        (["demo", "--deph", "3"], "usage: gradscope demo [-h]",
         "gradscope demo: error: unrecognized arguments: --deph (did you mean --depth?) 3"),
        (["analyse", "m"], "usage: gradscope [-h]",
         "gradscope: error: argument COMMAND: invalid choice: analyse (did you mean analyze?); choose from info, "
         "analyze, demo, compare, show"),
    ],
)
def test_a_mistyped_option_or_command_gets_the_command_s_usage_and_a_close_match(capsys, argv, usage, error):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and err.splitlines()[-1] == error


def test_input_files_are_checked_before_the_model_loads(tiny_bert, tmp_path, capsys):
    missing, images = tmp_path / "missing.txt", tmp_path / "photos"
    for extra, message in [
        (["--text", str(missing)], f"--text {missing}: cannot read it (No such file or directory); give a UTF-8 "
                                   "text file"),
        (["--text", str(tmp_path)], f"--text {tmp_path} is a directory; give a file"),
        (["--text", "/dev/zero"], "--text /dev/zero is not a regular file (a device, a pipe or a socket); give a file"),
        (["--images", str(images)], f"--images {images}: no such directory; give a directory of JPEG or PNG files"),
    ]:
        assert main(["analyze", str(tiny_bert), *FAST, "--out", "", *extra]) == 2
        assert capsys.readouterr().err == f"gradscope: error: {message}\n"  # no progress: nothing was loaded
    big = tmp_path / "big.txt"
    big.write_text("word " * 300_000)  # 1.5 MB
    os.environ["GRADSCOPE_MAX_TEXT_MB"] = "1"
    try:
        assert main(["analyze", str(tiny_bert), *FAST, "--out", "", "--text", str(big)]) == 2
    finally:
        del os.environ["GRADSCOPE_MAX_TEXT_MB"]
    assert capsys.readouterr().err == (f"gradscope: error: --text {big} is larger than 1 MiB, gradscope's bound for "
                                       "it; set GRADSCOPE_MAX_TEXT_MB to a larger number of MiB to read it\n")
    images.mkdir()
    (images / "notes.txt").write_text("not an image")
    checkpoint = hm.save_resnet18_checkpoint(tmp_path / "r18.safetensors")
    assert main(["analyze", str(checkpoint), "--arch", "resnet18", "--images", str(images), "--out", ""]) == 2
    assert capsys.readouterr().err == f"gradscope: error: --images {images}: no .jpg, .jpeg or .png files in it\n"


def test_a_text_file_given_as_the_model_says_what_it_is_and_exits_3(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("Gradients flow backwards through every layer.\n")
    assert main(["analyze", str(notes), "--out", ""]) == 3
    assert capsys.readouterr().err == (
        f"gradscope: error: {notes} is not a model: it looks like a text file, not a checkpoint (neither safetensors "
        "nor a torch.save archive); give a Hugging Face model directory or hub id, a torchvision model name, or a "
        ".safetensors/.pt checkpoint with --arch\n")


def test_unwritable_output_directory_exits_2_before_running(tiny_bert, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main(["analyze", str(tiny_bert), *FAST, "--out", str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a directory" in err and "loading" not in err


def test_model_load_failures_exit_3(tmp_path, capsys):
    assert main(["analyze", "resnet19"]) == 3
    assert "close matches: resnet18" in capsys.readouterr().err
    pickled = tmp_path / "model.pt"
    torch.save(torch.nn.Linear(2, 2), pickled)
    assert main(["analyze", str(pickled), "--arch", "resnet18", "--out", str(tmp_path / "out")]) == 3
    assert "needs pickled code" in capsys.readouterr().err
    assert main(["analyze", str(tmp_path), "--out", str(tmp_path / "out")]) == 3  # a directory without config.json
    assert "without config.json" in capsys.readouterr().err
    adapter = tmp_path / "lora"  # what PeftModel.save_pretrained writes: an adapter, no config.json
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text('{"peft_type": "LORA", "base_model_name_or_path": "bert-base-uncased"}')
    (adapter / "adapter_model.safetensors").write_bytes(b"")
    assert main(["analyze", str(adapter), "--out", str(tmp_path / "out")]) == 3  # its base is not here
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # progress lines, then the error in one line
    assert last.startswith("gradscope: error: ")
    assert "cannot load the base model 'bert-base-uncased'" in last or "install peft" in last


def test_checkpoint_without_arch_is_a_usage_error(tmp_path, capsys):
    path = hm.save_resnet18_checkpoint(tmp_path / "r18.safetensors")
    assert main(["analyze", str(path)]) == 2
    assert "--arch" in capsys.readouterr().err


def test_cuda_without_a_gpu_is_a_usage_error(tiny_bert, capsys):
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    assert main(["analyze", str(tiny_bert), "--device", "cuda", "--out", ""]) == 2
    assert "no CUDA GPU is visible" in capsys.readouterr().err
    assert main(["demo", "--device", "cuda:1"]) == 2
    assert "--device cuda:1: no CUDA GPU is visible" in capsys.readouterr().err


def test_version_and_the_package_s_public_names(capsys):
    import gradscope

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0 and capsys.readouterr().out == f"gradscope {gradscope.__version__}\n"
    assert dir(gradscope) == sorted(gradscope.__all__)  # not what it imports for itself (annotations, helpers)


def test_demo_writes_a_report_when_asked(tmp_path, capsys):
    assert main(["demo", "--depth", "6", "--width", "16", "--batch-size", "32", "--out", str(tmp_path / "d")]) == 0
    data = json.loads((tmp_path / "d" / "report.json").read_text())
    assert [s["variant"] for s in data["summaries"]] == ["sigmoid", "tanh", "relu", "relu-he", "batchnorm", "residual"]


def test_remote_code_is_refused_unless_asked(tmp_path, capsys):
    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gradscope-custom", "architectures": ["CustomModel"],
        "auto_map": {"AutoConfig": "configuration_custom.CustomConfig", "AutoModel": "modeling_custom.CustomModel"},
    }))
    (tmp_path / "configuration_custom.py").write_text(
        "raise SystemExit('remote code ran')\n"  # must never run
    )
    assert main(["analyze", str(tmp_path), "--offline", "--out", ""]) == 3
    assert "pass --trust-remote-code" in capsys.readouterr().err


# --- errors nobody planned for, argument checks -------------------------------------------------


class _Silent(Exception):
    def __str__(self):
        raise RuntimeError("a broken __str__")


@pytest.mark.parametrize(
    "error, line",
    [
        (RuntimeError("boom\nsecond line"), "gradscope: error: RuntimeError: boom"),
        (RuntimeError(), "gradscope: error: RuntimeError"),  # no message: no dangling colon, no crash
        (KeyError("x"), "gradscope: error: KeyError: 'x'"),
        (_Silent(), "gradscope: error: _Silent"),  # even a message that cannot be read
    ],
)
def test_an_unexpected_error_is_one_line_and_a_debug_hint(monkeypatch, capsys, error, line):
    import gradscope.cli as cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "_cmd_info", fail)
    monkeypatch.delenv("GRADSCOPE_DEBUG", raising=False)
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines() == [line, "gradscope: this was not expected; rerun with GRADSCOPE_DEBUG=1 to see the "
                                      "traceback"]
    monkeypatch.setenv("GRADSCOPE_DEBUG", "1")
    with pytest.raises(type(error)):  # the traceback, for whoever debugs it
        main(["info"])


def test_ctrl_c_exits_130_with_a_short_line(monkeypatch, capsys):
    import gradscope.cli as cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_info", interrupted)
    monkeypatch.delenv("GRADSCOPE_DEBUG", raising=False)
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "gradscope: interrupted\n"


@pytest.mark.parametrize("seed", ["99999999999999999999", "-1", str(2**63), "1.5"])
def test_a_seed_torch_cannot_take_is_a_usage_error(capsys, seed):
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--seed", seed, "--device", "cpu"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "argument --seed" in err and "Traceback" not in err


def test_the_largest_seed_runs(capsys):
    assert main(["demo", "--depth", "2", "--width", "4", "--batch-size", "4", "--device", "cpu",
                 "--seed", str(2**63 - 1)]) == 0


def test_a_name_given_twice_runs_once(monkeypatch, capsys):
    from gradscope.cli import _names
    from gradscope.report import Report, check_formats

    assert _names("he, sigmoid,he,none") == ("he", "sigmoid")
    assert check_formats("json,md,json") == ("json", "md")
    seen = {}

    def fake_analyze(model, config, progress=None):
        seen["config"] = config
        return Report()

    monkeypatch.setattr("gradscope.analyzer.analyze", fake_analyze)
    assert main(["analyze", "some-model", "--what-if", "he,he", "--baselines", "scratch,pretrained,scratch",
                 "--out", ""]) == 0
    assert seen["config"].what_ifs == ("he",) and seen["config"].baselines == ("scratch", "pretrained")


def test_demo_help_says_no_report_is_written_without_out(capsys):
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "directory to write the report to (default: none: only the summary is printed)" in text


# --- one report per directory ----------------------------------------------------------------------

TINY_DEMO = ["demo", "--depth", "3", "--width", "4", "--batch-size", "4", "--device", "cpu"]


def test_another_format_into_a_report_directory_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "d"
    assert main([*TINY_DEMO, "--out", str(out), "--format", "json"]) == 0
    capsys.readouterr()
    assert main([*TINY_DEMO, "--out", str(out), "--format", "md"]) == 2
    err = capsys.readouterr().err
    assert f"{out / 'report.json'} already exists; pass --force" in err and "demo:" not in err  # no work done
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]


def test_force_replaces_the_whole_report_not_just_the_files_it_writes(tmp_path, capsys):
    out = tmp_path / "d"
    assert main([*TINY_DEMO, "--out", str(out), "--format", "json,html,md,csv"]) == 0
    assert main([*TINY_DEMO, "--out", str(out), "--format", "json", "--force", "--seed", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["report.json"]  # no stale page, summary or tables
    assert json.loads((out / "report.json").read_text())["meta"]["seed"] == 1
    (out / "notes.txt").write_text("mine")
    assert main([*TINY_DEMO, "--out", str(out), "--format", "md", "--force"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "report.md"]  # only gradscope's files go


# --- the per-block table of variants with different blocks ---------------------------------------


def test_shallow_resnet_values_sit_on_their_own_blocks(tmp_path, capsys):
    """The shallow ResNet-18 keeps layer1.0, layer2.0, layer3.0, layer4.0: its values belong on those rows."""
    path = hm.save_resnet18_checkpoint(tmp_path / "r18.safetensors")
    out = tmp_path / "out"
    assert main(["analyze", str(path), "--arch", "resnet18", "--image-size", "32", "--batch-size", "2",
                 "--device", "cpu", "--baselines", "pretrained,shallow", "--out", str(out), "--format", "json,md"]) == 0
    text = capsys.readouterr().out
    data = json.loads((out / "report.json").read_text())
    shallow = {b["block"]: b["act_grad_l2"] for b in data["blocks"] if b["variant"] == "shallow"}
    assert list(shallow) == ["layer1.0", "layer2.0", "layer3.0", "layer4.0"]
    from gradscope.report.fmt import num

    terminal = {line.split()[1]: line.split()[2:] for line in text.splitlines() if re.match(r"\d+ +layer\d\.\d", line)}
    markdown = {cells[2].strip(): [c.strip() for c in cells[3:-1]]
                for cells in (line.split("|") for line in (out / "report.md").read_text().splitlines())
                if len(cells) > 3 and re.fullmatch(r" layer\d\.\d ", cells[2])}
    for table in (terminal, markdown):
        assert list(table) == ["layer1.0", "layer1.1", "layer2.0", "layer2.1", "layer3.0", "layer3.1", "layer4.0",
                               "layer4.1"]
        for block, cells in table.items():
            assert (cells[1] if len(cells) > 1 and cells[1] else None) == (
                num(shallow[block]) if block in shallow else None), block


@pytest.mark.slow
def test_a_reader_that_leaves_early_ends_the_command_quietly():
    """`gradscope ... | head`: a closed pipe is not an error worth a message."""
    script = ("import sys\nimport gradscope.cli as cli\n"
              "def chatty(args):\n    for _ in range(100_000):\n        print('x' * 80)\n    return 0\n"
              "cli._cmd_info = chatty\nsys.exit(cli.main(['info']))\n")
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.read(100)
    proc.stdout.close()  # the reader leaves
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141
    assert err == ""


@pytest.mark.parametrize("option, value, message", [
    ("--batch-size", "1000000000", "--batch-size 1000000000: gradscope allows at most 4096 samples per batch"),
    ("--batches", "1000000000", "--batches 1000000000: gradscope allows at most 1024 batches"),
    ("--seq-len", "100000000", "--seq-len 100000000: gradscope allows at most 65536 tokens per sequence"),
    ("--image-size", "100000", "--image-size 100000: gradscope allows at most 4096 pixels per image side"),
])
def test_sizes_past_their_bound_are_refused_before_any_work(tmp_path, capsys, option, value, message):
    assert main(["analyze", str(tmp_path / "no-model-needed"), option, value, "--out", ""]) == 2
    assert capsys.readouterr().err == (f"gradscope: error: {message}; set GRADSCOPE_NO_SIZE_BOUNDS=1 if you really "
                                       "need more\n")


def test_a_message_names_python_options_from_python_and_flags_on_the_command_line(tiny_bert, capsys):
    """The library names an option as a Python caller passes it; the command line shows it as its flag."""
    import gradscope
    from gradscope.errors import UsageError

    cases = [  # (analyze's config, the command line's arguments, the message from Python, on the command line)
        (dict(what_ifs=("relu2",)), ["--what-if", "relu2"],
         "`what_ifs`: unknown variant relu2", "--what-if: unknown variant relu2"),
        (dict(seq_len=1000, device="cpu"), ["--seq-len", "1000", "--device", "cpu"],
         "`seq_len=1000` is longer than the model's 128 positions; use `seq_len=128` or less",
         "--seq-len 1000 is longer than the model's 128 positions; use --seq-len 128 or less"),
    ]
    for config, arguments, from_python, on_the_command_line in cases:
        with pytest.raises(UsageError) as info:
            gradscope.analyze(str(tiny_bert), gradscope.AnalyzeConfig(**config))
        assert str(info.value).startswith(from_python) and "--" not in str(info.value)
        assert main(["analyze", str(tiny_bert), *arguments, "--out", ""]) == 2
        assert capsys.readouterr().err.splitlines()[-1].startswith(f"gradscope: error: {on_the_command_line}")
    # a note stored in the report (its summary on the command line): a Python name, in flags on the terminal
    from gradscope.cli import build_parser, option_flags
    from gradscope.errors import in_flag_terms

    flags = option_flags(build_parser().commands["analyze"])
    assert in_flag_terms("raise `batch_size`, or `image_size`", flags) == "raise --batch-size, or --image-size"
    assert in_flag_terms("offline? `HF_HUB_OFFLINE=1` skips the hub", flags) == "offline? --offline skips the hub"
    assert in_flag_terms("drop it from `what_ifs`", flags) == "drop it from --what-if"
    assert option_flags(build_parser().commands["demo"])["train_steps"] == "--train"


# --- gradscope show -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_reports(tmp_path_factory):
    """A demo report and a comparison of two, written by their commands (with what each printed), and a training
    run's report written by its monitor."""
    import report_fixtures as rf

    root = tmp_path_factory.mktemp("show")
    printed = {}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("COLUMNS", "80")
        for name, argv in [("demo", [*TINY_DEMO, "--out", str(root / "demo"), "--format", "json"]),
                           ("deeper", [*TINY_DEMO[:2], "5", *TINY_DEMO[3:], "--out", str(root / "deeper"),
                                       "--format", "json"]),
                           ("compare", ["compare", str(root / "demo"), str(root / "deeper"), "--out",
                                        str(root / "compare"), "--format", "json"])]:
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                assert main(argv) == 0, err.getvalue()
            printed[name] = out.getvalue()
    rf.monitor_report(steps=12).save(root / "training", formats="json")
    return root, printed


@pytest.mark.parametrize("name", ["demo", "compare"])
def test_show_prints_an_analysis_or_a_comparison_as_its_command_did(saved_reports, monkeypatch, capsys, name):
    root, printed = saved_reports
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["show", str(root / name)]) == 0
    shown = capsys.readouterr()
    assert shown.out == printed[name] and shown.err == ""


def test_show_prints_a_training_report_from_its_directory_or_its_json(saved_reports, monkeypatch, capsys):
    from gradscope.report import Report
    from gradscope.report.terminal import render_text

    root, _ = saved_reports
    monkeypatch.setenv("COLUMNS", "100")
    for path in (root / "training", root / "training" / "report.json"):
        assert main(["show", str(path)]) == 0
        out = capsys.readouterr().out
        assert out == render_text(Report.load(path), 100)
        assert out.startswith("gradscope: training of Sequential (a GradientMonitor report)\nsteps recorded: 12\n")


def test_show_refuses_what_is_not_a_report_in_one_line_with_exit_2(saved_reports, tmp_path, capsys):
    root, _ = saved_reports
    (tmp_path / "notes.txt").write_text("not json")
    (tmp_path / "other.json").write_text(json.dumps({"name": "x"}))
    (tmp_path / "newer.json").write_text(json.dumps({"schema": "gradscope.report/2"}))
    (tmp_path / "empty").mkdir()
    cases = [
        (tmp_path / "missing.json", f"cannot read report {tmp_path / 'missing.json'}: No such file or directory"),
        (tmp_path / "empty", f"cannot read report {tmp_path / 'empty' / 'report.json'}: No such file or directory"),
        (tmp_path / "notes.txt", f"{tmp_path / 'notes.txt'} is not a gradscope report: it is not JSON "
                                 "(Expecting value: line 1 column 1 (char 0))"),
        (tmp_path / "other.json", f"{tmp_path / 'other.json'} is not a gradscope report: it has no \"schema\" key"),
        (tmp_path / "newer.json", f"{tmp_path / 'newer.json'}: report schema 'gradscope.report/2' is not "
                                  "'gradscope.report/1'; this gradscope reads gradscope.report/1 (upgrade gradscope "
                                  "to read newer reports)"),
    ]
    for path, message in cases:
        assert main(["show", str(path)]) == 2
        captured = capsys.readouterr()
        assert captured.err == f"gradscope: error: {message}\n" and captured.out == ""


def test_show_shows_control_characters_in_a_report_without_acting_on_them(saved_reports, tmp_path, capsys):
    root, _ = saved_reports
    data = json.loads((root / "training" / "report.json").read_text())
    for row in data["series"]:
        if row["block"] == "0":
            row["block"] = "0\x1b[2J"
    (tmp_path / "report.json").write_text(json.dumps(data))
    assert main(["show", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "0\\x1b[2J" in out


def test_show_is_in_the_help_and_runs_through_the_entry_point(saved_reports, capsys):
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    assert re.search(r"show\s+a saved report in the terminal", capsys.readouterr().out)
    root, _ = saved_reports
    result = run_module("show", str(root / "training"), env={"COLUMNS": "60"})
    assert result.returncode == 0 and result.stderr == ""
    assert max(map(len, result.stdout.splitlines())) <= 60 and "per block at step 12" in result.stdout
    missing = run_module("show", str(root / "nothing-here"))
    assert missing.returncode == 2 and missing.stdout == ""
    assert missing.stderr == (f"gradscope: error: cannot read report {root / 'nothing-here'}: No such file or "
                              "directory\n")
