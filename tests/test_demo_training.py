"""``gradscope demo --train``: each variant trained on the teacher task, and what the report says of it.

The training is checked against a loop written here from the documented task (the teacher, the batch stream,
the SGD-with-momentum and Adam updates written out by hand), its block movement against a float64 computation
from weights saved here, and its verdict against what it learns: a vanishing sigmoid stack's first block barely
moves under SGD while a He-initialized ReLU stack's does.
"""

from __future__ import annotations

import json
import re
from html import escape as _html
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from gradscope.cli import main
from gradscope.demo import CLASSES, IN_FEATURES, DeepMLP, demo
from gradscope.demo_training import OPTIMIZERS, TeacherTask, train_run
from gradscope.errors import UsageError
from gradscope.report import RENDERERS, Report
from gradscope.report.plots import all_plots, colors
from gradscope.report.terminal import render_text

SMALL = dict(depth=6, width=32, batch_size=64, seed=7, device="cpu", variants=("sigmoid", "relu", "relu-he"))
STEPS = 25


@pytest.fixture(scope="module")
def trained():
    return demo(**SMALL, train_steps=STEPS)


def _run(report, variant: str, optimizer: str) -> dict:
    return next(r for r in report.training["runs"] if r["variant"] == variant and r["optimizer"] == optimizer)


# --- the training itself -------------------------------------------------------------------


def _teacher_batches(seed: int, steps: int, batch_size: int):
    """The task as docs/report-schema.md states it, built here: W1 64 x 32 and W2 10 x 64 with variance 1/fan_in
    from seed + 1, inputs N(0, I) from seed + 2, labels argmax(W2 tanh(W1 x))."""
    g = torch.Generator().manual_seed(seed + 1)
    w1 = torch.randn((64, IN_FEATURES), generator=g) / 32 ** 0.5
    w2 = torch.randn((CLASSES, 64), generator=g) / 8
    stream = torch.Generator().manual_seed(seed + 2)
    for _ in range(steps):
        x = torch.randn((batch_size, IN_FEATURES), generator=stream)
        yield x, (torch.tanh(x @ w1.T) @ w2.T).argmax(dim=1)


@pytest.fixture
def one_thread():
    """The thread count the training runs on (the curve depends on how sums are split across threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _reference_curve(variant: str, optimizer: str, lr: float) -> list[float]:
    """The training loss per step, from a loop with the optimizer's update written out."""
    torch.manual_seed(SMALL["seed"])
    model = DeepMLP(variant, SMALL["depth"], SMALL["width"])
    params = list(model.parameters())
    state = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    curve = []
    for t, (x, y) in enumerate(_teacher_batches(SMALL["seed"], STEPS, SMALL["batch_size"]), start=1):
        loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(loss, params)
        with torch.no_grad():
            for p, g, (m, v) in zip(params, grads, state):
                if optimizer == "sgd":  # PyTorch's SGD: the buffer starts as the first gradient
                    m.copy_(g if t == 1 else 0.9 * m + g)
                    p -= lr * m
                else:  # Adam (Kingma and Ba 2015), beta1 0.9, beta2 0.999, eps 1e-8
                    m.mul_(0.9).add_(0.1 * g)
                    v.mul_(0.999).add_(0.001 * g * g)
                    p -= lr * (m / (1 - 0.9 ** t)) / ((v / (1 - 0.999 ** t)).sqrt() + 1e-8)
        curve.append(loss.item())
    return curve


@pytest.mark.parametrize("optimizer", [o.name for o in OPTIMIZERS])
@pytest.mark.parametrize("variant", ["sigmoid", "relu-he"])
def test_loss_curve_is_the_one_a_hand_written_loop_gives(trained, variant, optimizer, one_thread):
    lr = next(o.lr for o in OPTIMIZERS if o.name == optimizer)
    curve = _run(trained, variant, optimizer)["loss"]
    assert len(curve) == STEPS
    assert curve == pytest.approx(_reference_curve(variant, optimizer, lr), rel=1e-4)


def test_the_task_is_the_teacher_it_says():
    task = TeacherTask.from_seed(7, IN_FEATURES, CLASSES)
    x, y = next(_teacher_batches(7, 1, 64))
    assert torch.equal(task.labels(x), y)
    assert len(set(y.tolist())) >= 5  # a task with several classes, not one


def test_same_seed_same_training_and_another_seed_another():
    again = demo(**{**SMALL, "variants": ("relu-he",)}, train_steps=5)
    same = demo(**{**SMALL, "variants": ("relu-he",)}, train_steps=5)
    other = demo(**{**SMALL, "variants": ("relu-he",), "seed": 8}, train_steps=5)
    strip = lambda t: [{k: v for k, v in r.items() if k != "seconds"} for r in t["runs"]]  # noqa: E731
    assert strip(again.training) == strip(same.training)
    assert strip(again.training) != strip(other.training)


def test_block_movement_is_the_float64_change_of_the_saved_weights():
    torch.manual_seed(0)
    model = DeepMLP("batchnorm", 4, 16)  # Linear and BatchNorm parameters in every block
    saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
    task = TeacherTask.from_seed(0, IN_FEATURES, CLASSES)
    run = train_run(model, task, OPTIMIZERS[0], steps=10, batch_size=32, seed=0, blocks=("blocks.0", "blocks.3"))
    after = model.state_dict()
    for block, key in (("blocks.0", "first_block_moved"), ("blocks.3", "last_block_moved")):
        names = [f"{block}.{p}" for p in ("linear.weight", "linear.bias", "norm.weight", "norm.bias")]
        change = sum(((after[n].double() - saved[n].double()) ** 2).sum().item() for n in names)
        base = sum((saved[n].double() ** 2).sum().item() for n in names)
        assert run[key] == pytest.approx((change / base) ** 0.5, rel=1e-12)
        assert run[key] > 0


def test_first_and_last_blocks_are_the_reports(trained):
    for run in trained.training["runs"]:
        rows = trained.block_rows(run["variant"])
        assert (run["first_block"], run["last_block"]) == (rows[0]["block"], rows[-1]["block"])


def test_verdict_and_learning_agree_on_a_short_run():
    """At the demo's size, 30 steps of SGD: the vanishing sigmoid stack's first block moves orders of magnitude
    less than the healthy He-init ReLU stack's (not at all: its gradient there is below float32's resolution of
    the weights), its top block does move, and it learns nothing beyond the class frequencies while the ReLU stack
    gets below them. A training that did not update the weights, or updated every block alike, fails here."""
    report = demo(device="cpu", variants=("sigmoid", "relu-he"), train_steps=30)
    assert report.summary("sigmoid")["verdict"] == "vanishing" and report.summary("relu-he")["verdict"] == "healthy"
    sigmoid, he = _run(report, "sigmoid", "sgd"), _run(report, "relu-he", "sgd")
    assert he["first_block_moved"] > 1e-3
    assert sigmoid["first_block_moved"] < 1e-4 * he["first_block_moved"]
    assert sigmoid["last_block_moved"] > 1e-3
    floor = report.training["label_entropy"]  # what predicting the class frequencies alone reaches
    assert he["final_loss"] < floor - 0.05 < floor - 0.01 < sigmoid["final_loss"] < sigmoid["initial_loss"]


# --- the report ----------------------------------------------------------------------------


def test_a_demo_without_training_has_no_training_section():
    report = demo(**{**SMALL, "variants": ("relu",)})
    assert report.training == {} and "training" not in report.to_dict()
    assert all(p.key != "training" for p in all_plots(report))
    assert "what each variant learned" not in render_text(report)


def test_json_markdown_and_html_hold_the_section(trained, tmp_path):
    written = {p.name for p in trained.save(tmp_path, formats="json,md,html,svg")}
    assert "training.svg" in written
    data = json.loads((tmp_path / "report.json").read_text())
    runs = data["training"]["runs"]
    pairs = [(v, o.name) for v in SMALL["variants"] for o in OPTIMIZERS]
    assert [(r["variant"], r["optimizer"]) for r in runs] == pairs
    assert all(len(r["loss"]) == STEPS for r in runs)
    assert Report.load(tmp_path).to_dict() == trained.to_dict()

    md = (tmp_path / "report.md").read_text()
    section = md.split("## Training: which variants learn", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert len(rows) == len(runs)
    he = _run(trained, "relu-he", "sgd")
    assert (f"| relu-he | **healthy** | SGD | {he['initial_loss']:.3g} | {he['final_loss']:.3g} | "
            f"{he['final_to_initial']:.3g} | {he['first_block_moved']:.2g} | {he['last_block_moved']:.2g} |") in md
    assert "SGD (lr 0.03, momentum 0.9) and with Adam (lr 0.001)" in section

    page = (tmp_path / "report.html").read_text()
    assert '<a href="#training">Training</a>' in page
    table = page.split('<section id="training">', 1)[1].split("</section>", 1)[0]
    assert table.count("<tr>") == len(runs) + 1  # and the header
    assert page.index('<section id="verdicts">') < page.index('<section id="training">') < page.index(
        '<section id="findings">')
    assert 'id="figure-training"' in page


def test_loss_plot_has_a_panel_per_optimizer_and_each_variant_in_its_color(trained):
    spec = next(p for p in all_plots(trained) if p.key == "training")
    index = colors(trained).variants
    panels = {}
    for line in spec.lines:
        panels.setdefault(line.panel, []).append(line)
        assert line.color == index[line.series]
    assert list(panels) == ["SGD (lr 0.03, momentum 0.9)", "Adam (lr 0.001)"]
    for optimizer, lines in zip(("sgd", "adam"), panels.values()):
        assert [line.series for line in lines] == list(SMALL["variants"])
        for line in lines:
            assert line.x == list(range(1, STEPS + 1))
            assert line.y == _run(trained, line.series, optimizer)["loss"]
    svg = RENDERERS["svg"](trained)["training.svg"].decode()
    legend = re.findall(r'<g class="legend-item" data-series="\d+">.*?<text[^>]*>([^<]*)</text></g>', svg)
    assert legend == list(SMALL["variants"])  # each variant once, for both panels
    assert all(f">{_html(panel)}</text>" in svg for panel in panels)


def test_terminal_adds_the_table_and_changes_nothing_else(trained):
    with_training = render_text(trained, 100).splitlines()
    without = Report(**{**trained.__dict__, "training": {}})
    start = with_training.index("what each variant learned in training")
    end = with_training.index("", start)
    assert with_training[:start] + with_training[end + 1:] == render_text(without, 100).splitlines()
    table = with_training[start + 1:end]
    table = table[:next(i for i, line in enumerate(table) if line.startswith("Each variant trained"))]
    assert table[0].split() == ["variant", "verdict", "optimizer", "loss", "before", "loss", "after", "after/before",
                                "first", "moved", "last", "moved"]
    assert len(table) == 2 + len(trained.training["runs"])  # header, rule, a row per run: it fits in 100 columns
    run = _run(trained, "sigmoid", "sgd")
    assert table[2].split() == ["sigmoid", "vanishing", "SGD", f"{run['initial_loss']:.3g}", f"{run['final_loss']:.3g}",
                                f"{run['final_to_initial']:.3g}", f"{run['first_block_moved']:.2g}",
                                f"{run['last_block_moved']:.2g}"]


def test_cli_demo_train_writes_the_section_and_refuses_zero_steps(tmp_path, capsys):
    out = tmp_path / "d"
    assert main(["demo", "--depth", "3", "--width", "8", "--batch-size", "16", "--device", "cpu", "--train", "4",
                 "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "what each variant learned in training" in captured.out
    assert "trained sigmoid with SGD" in captured.err
    assert json.loads((out / "report.json").read_text())["training"]["steps"] == 4
    with pytest.raises(SystemExit) as exit_info:
        main(["demo", "--train", "0"])
    assert exit_info.value.code == 2
    assert "argument --train: 0: give at least 1 step" in capsys.readouterr().err


def test_every_key_of_the_section_is_documented(trained):
    doc = (Path(__file__).resolve().parents[1] / "docs" / "report-schema.md").read_text()
    section = doc.split("\n## training\n", 1)[1]
    documented = {part.strip("[]") for token in re.findall(r"`([a-z_0-9.\[\]]+)`", section) for part in token.split(".")}
    training = trained.to_dict()["training"]
    keys = set(training) | set(training["runs"][0]) | {k for o in training["optimizers"] for k in o}
    assert sorted(keys - documented) == []


@pytest.mark.parametrize("change, says", [
    (lambda t: t.update(runs=5), "training.runs is a number (5), not a list"),
    (lambda t: t["runs"][0].update(variant="nope"), "training.runs[0].variant 'nope' is not one of its variants"),
    (lambda t: t["runs"][1]["loss"].append("x"), "training.runs[1].loss holds a string ('x'), not a number or null"),
    (lambda t: t["runs"][0]["loss"].append(True), "training.runs[0].loss holds a boolean (True), not a number or null"),
    (lambda t: t["optimizers"][0].pop("name"), "training.optimizers[0] has no 'name'"),
    (lambda t: t.update(steps="many"), "training.steps is a string ('many'), not an integer"),
])
def test_a_crafted_training_section_is_refused_with_what_is_wrong(trained, tmp_path, change, says):
    trained.save(tmp_path / "good", formats="json")
    data = json.loads((tmp_path / "good" / "report.json").read_text())
    change(data["training"])
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(UsageError, match=re.escape(f"{bad} is not a gradscope report: {says}")):
        Report.load(bad)
    assert Report.load(tmp_path / "good").training == json.loads(json.dumps(trained.training))  # the good one reads


def test_the_training_runs_and_their_loss_curves_are_tables_too(trained, tmp_path):
    import csv

    trained.save(tmp_path, formats="csv")
    with open(tmp_path / "training_runs.csv", newline="") as f:
        runs = list(csv.DictReader(f))
    with open(tmp_path / "training_loss.csv", newline="") as f:
        losses = list(csv.DictReader(f))
    assert [(r["variant"], r["optimizer"]) for r in runs] == [(r["variant"], r["optimizer"])
                                                              for r in trained.training["runs"]]
    assert "loss" not in runs[0] and float(runs[0]["final_loss"]) == trained.training["runs"][0]["final_loss"]
    assert len(losses) == STEPS * len(trained.training["runs"])
    first = trained.training["runs"][0]
    assert [float(r["loss"]) for r in losses if (r["variant"], r["optimizer"]) == (first["variant"],
                                                                                      first["optimizer"])] == first["loss"]
    assert not (tmp_path / "series.csv").exists()  # an analysis has no series: a table without rows is not written
