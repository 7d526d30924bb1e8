"""The monitor's training view: pre- and post-clip norms, skipped non-finite steps, spikes, callable sinks.

Every number is checked against float64 norms computed here from the gradients themselves."""

from __future__ import annotations

import copy
import math
import warnings

import pytest
import torch

from gradscope.errors import UsageError
from gradscope.monitor import SPIKE_FACTOR, GradientMonitor
from test_monitor import BLOCKS, backward, close, make, ref_block_l2, ref_global_l2


def _clipped_run(steps: int, max_norm: float, *, clip_with_torch: bool = False):
    """A plain loop with Adam that clips every step; returns (history, latest, report, float64 references)."""
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    refs = []
    with GradientMonitor(net) as monitor:
        for step in range(steps):
            backward(net, step)
            pre = {"global": ref_global_l2(net), **ref_block_l2(net)}  # the manual loop, before the clip
            if clip_with_torch:
                monitor.step()
                monitor.note_clip(max_norm, torch.nn.utils.clip_grad_norm_(net.parameters(), max_norm))
            else:
                monitor.clip_grad_norm_(max_norm)
            refs.append({**pre, "post": ref_global_l2(net)})
            opt.step()
            opt.zero_grad()
        history, latest, report = monitor.history, monitor.latest(), monitor.report()
    return history, latest, report, refs


@pytest.mark.parametrize("clip_with_torch", [False, True])
def test_clipped_steps_record_pre_clip_blocks_and_global_and_the_post_clip_global(clip_with_torch):
    history, latest, report, refs = _clipped_run(3, 0.05, clip_with_torch=clip_with_torch)
    assert all(ref["post"] < ref["global"] for ref in refs)  # every step was clipped
    for t, ref in enumerate(refs):
        assert close(history.global_l2()[t].item(), ref["global"])
        for b, block in enumerate(history.blocks):
            assert close(history.block_l2()[t, b].item(), ref[block])
        assert math.isclose(history.post_clip_l2[t].item(), ref["post"], rel_tol=1e-6)
    assert history.clip_max_norm.tolist() == [0.05] * 3
    assert close(latest["global"], refs[-1]["global"]) and latest["clip_max_norm"] == 0.05
    assert all(close(latest["blocks"][b], refs[-1][b]) for b in BLOCKS)
    glob = [r for r in report.series if r["block"] is None]
    assert [r["clip_max_norm"] for r in glob] == [0.05] * 3
    assert all(close(r["grad_l2"], ref["global"]) for r, ref in zip(glob, refs))
    assert all(math.isclose(r["grad_l2_post_clip"], ref["post"], rel_tol=1e-6) for r, ref in zip(glob, refs))
    blocks = [r for r in report.series if r["block"] is not None]
    assert all(close(r["grad_l2"], refs[r["step"] - 1][r["block"]]) for r in blocks)


def test_unclipped_steps_have_no_clip_level():
    net = make()
    with GradientMonitor(net) as monitor:
        backward(net, 0)
        monitor.step()
        latest = monitor.latest()
        rows = monitor.history.rows()
    assert math.isnan(latest["clip_max_norm"]) and math.isnan(latest["post_clip"])
    assert math.isnan(rows[-1]["clip_max_norm"])


def _poison(net, block: str = "layers.1") -> None:
    dict(net.named_parameters())[f"{block}.0.weight"].grad[0, 0] = math.nan


@pytest.mark.parametrize("drive", ["optimizer hook", "step", "clip_grad_norm_ with the hook"])
def test_skip_leaves_weights_and_adam_state_untouched_and_training_goes_on(drive):
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, weight_decay=0.1)
    monitor = GradientMonitor(net, None if drive == "step" else opt, on_nonfinite="skip")
    weights, state = [], []
    for step in range(3):
        backward(net, step)
        if step == 1:
            _poison(net)
        weights.append({n: p.detach().clone() for n, p in net.named_parameters()})
        state.append(copy.deepcopy(opt.state_dict()["state"]))
        if drive == "step":
            monitor.step()
        elif drive.startswith("clip"):
            monitor.clip_grad_norm_(0.05)
        opt.step()
        if step == 1:
            assert all(p.grad is None for p in net.parameters())  # dropped, as zero_grad() does
        opt.zero_grad()
    after = {n: p.detach().clone() for n, p in net.named_parameters()}
    final_state = opt.state_dict()["state"]
    with pytest.warns(RuntimeWarning, match="at step 2.*first block .*layers.1.*The optimizer step was skipped"):
        monitor.flush()
    report = monitor.report()
    monitor.close()
    for name in weights[1]:  # the skipped step (2) changed nothing; steps 1 and 3 did
        assert torch.equal(weights[1][name], weights[2][name])
        assert not torch.equal(weights[2][name], after[name]) or name.startswith("unused")
    for index, moments in state[2].items():  # Adam's moments and step count as step 1 left them
        assert torch.equal(moments["exp_avg"], state[1][index]["exp_avg"])
        assert torch.equal(moments["exp_avg_sq"], state[1][index]["exp_avg_sq"])
        assert float(moments["step"]) == 1.0 and float(final_state[index]["step"]) == 2.0
    assert all(torch.isfinite(p).all() for p in after.values())
    assert monitor.skipped_steps == [2]
    [finding] = [f for f in report.findings if f["kind"] == "non-finite"]
    assert finding["severity"] == "warning" and finding["block"] == "layers.1"
    assert finding["message"] == ("non-finite gradient values at 1 of 3 recorded step(s), first at step 2 in block "
                                  "layers.1; the optimizer step was skipped at 1 step(s): 2")


def test_a_finite_run_with_skip_never_syncs_into_a_skip():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with GradientMonitor(net, opt, on_nonfinite="skip") as monitor:
            for step in range(2):
                backward(net, step)
                opt.step()
                opt.zero_grad()
            assert monitor.skipped_steps == [] and len(monitor.history) == 2


def test_a_spike_is_a_finding_naming_its_step_and_the_block_that_carried_it():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    globals_, spike_share = [], None
    with GradientMonitor(net, opt) as monitor:
        for step in range(1, 31):
            backward(net, step)
            if step in (4, 25):  # step 4: too early to judge (3 steps before it); step 25: a spike
                for p in dict(net.named_modules())["layers.2"].parameters():
                    p.grad.mul_(1000)
            if step == 25:
                blocks = ref_block_l2(net)
                spike_share = blocks["layers.2"] ** 2 / ref_global_l2(net) ** 2
            globals_.append(ref_global_l2(net))
            opt.step()
            opt.zero_grad()
        report = monitor.report()
    spikes = [f for f in report.findings if f["kind"] == "grad-spike"]
    assert len(spikes) == 1
    [spike] = spikes
    ordered = sorted(globals_[4:24])  # the 20 steps before step 25; the median averages the middle two
    median = (ordered[9] + ordered[10]) / 2
    assert globals_[24] > SPIKE_FACTOR * median
    assert globals_[3] > SPIKE_FACTOR * sorted(globals_[:3])[1]  # step 4 is as large, but had only 3 steps before it
    assert spike["block"] == "layers.2" and spike["severity"] == "warning"
    assert spike["message"] == (f"gradient norm spike at step 25: {globals_[24]:.3g}, "
                                f"{globals_[24] / median:.1f}x the running median; "
                                f"block layers.2 carried {spike_share:.0%} of it")
    assert "the median of the 20 finite recorded steps before it" in spike["evidence"]


def test_log_to_a_callable_gets_each_step_as_one_dict():
    net = make()
    calls, refs = [], []
    with GradientMonitor(net, flush_every=2) as monitor:
        monitor.log_to(lambda step, d: calls.append((step, d)))
        for step in range(3):
            backward(net, step)
            refs.append({"global": ref_global_l2(net), **ref_block_l2(net)})
            monitor.clip_grad_norm_(0.05)
            refs[-1]["post"] = ref_global_l2(net)
            net.zero_grad()
    assert [step for step, _ in calls] == [1, 2, 3]
    for (_, values), ref in zip(calls, refs):
        assert set(values) == {"gradscope/grad_norm/global", "gradscope/grad_norm_post_clip/global",
                               "gradscope/clip_max_norm", "gradscope/nonfinite/global",
                               *(f"gradscope/grad_norm/{b}" for b in BLOCKS)}
        assert close(values["gradscope/grad_norm/global"], ref["global"])
        assert all(close(values[f"gradscope/grad_norm/{b}"], ref[b]) for b in BLOCKS)
        assert math.isclose(values["gradscope/grad_norm_post_clip/global"], ref["post"], rel_tol=1e-6)
        assert values["gradscope/clip_max_norm"] == 0.05 and values["gradscope/nonfinite/global"] == 0.0


def test_log_to_refuses_what_is_neither_a_writer_nor_a_callable():
    net = make()
    with GradientMonitor(net) as monitor:
        with pytest.raises(UsageError, match="SummaryWriter .* or a callable"):
            monitor.log_to(42)
        with pytest.raises(UsageError, match="add_histogram"):
            monitor.log_to(lambda step, d: None, histograms=True)


def test_tensorboard_files_hold_pre_and_post_clip_series(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    net = make()
    writer = SummaryWriter(tmp_path)
    refs = []
    with GradientMonitor(net) as monitor:
        monitor.log_to(writer)
        for step in range(2):
            backward(net, step)
            refs.append((ref_global_l2(net), ref_block_l2(net)["layers.3"]))
            monitor.clip_grad_norm_(0.05)
            refs[-1] += (ref_global_l2(net),)
            net.zero_grad()
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    read = lambda tag: [(e.step, e.value) for e in events.Scalars(tag)]  # noqa: E731 (float32 in the file)
    for tag, column in (("gradscope/grad_norm/global", 0), ("gradscope/grad_norm/layers.3", 1),
                        ("gradscope/grad_norm_post_clip/global", 2)):
        assert [s for s, _ in read(tag)] == [1, 2]
        assert all(math.isclose(v, ref[column], rel_tol=1e-6) for (_, v), ref in zip(read(tag), refs))
    assert [v for _, v in read("gradscope/clip_max_norm")] == pytest.approx([0.05, 0.05])
