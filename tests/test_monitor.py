"""GradientMonitor against float64 references computed here from the gradients themselves."""

from __future__ import annotations

import copy
import dataclasses
import math
import warnings

import pytest
import torch
from torch import nn

import gradscope
from gradscope.errors import GradscopeError, UsageError
from gradscope.monitor import GradientMonitor
from gradscope.report.markdown import render_markdown

BLOCKS = ["layers.0", "layers.1", "layers.2", "layers.3"]


class Net(nn.Module):
    """Embedding-like input layer, four numbered blocks, a head, and a layer the loss never uses."""

    def __init__(self, width: int = 8, depth: int = 4, reverse: bool = False):
        super().__init__()
        self.inp = nn.Linear(4, width)
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.Tanh()) for _ in range(depth))
        self.head = nn.Linear(width, 1)
        self.unused = nn.Linear(2, 2)
        self.reverse = reverse  # run the blocks in reverse registration order

    def forward(self, x):
        h = self.inp(x)
        for layer in (reversed(self.layers) if self.reverse else self.layers):
            h = layer(h)
        return self.head(h)


def make(seed: int = 0, **kw) -> Net:
    torch.manual_seed(seed)
    return Net(**kw)


def backward(net: nn.Module, seed: int, scale: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)
    (scale * ((net(x) - y) ** 2).mean()).backward()


def ref_param_l2(net: nn.Module) -> dict[str, float]:
    return {n: torch.linalg.vector_norm(p.grad.double()).item()
            for n, p in net.named_parameters() if p.grad is not None}


def ref_block_l2(net: nn.Module) -> dict[str, float]:
    out = {}
    for b in BLOCKS:
        grads = [p.grad.double().reshape(-1) for n, p in net.named_parameters() if n.startswith(b + ".")]
        out[b] = torch.linalg.vector_norm(torch.cat(grads)).item()
    return out


def ref_global_l2(net: nn.Module) -> float:
    return torch.linalg.vector_norm(torch.cat([p.grad.double().reshape(-1) for p in net.parameters()
                                               if p.grad is not None])).item()


def close(a: float, b: float) -> bool:
    # The fused op sums fp32 values in fp32 SIMD lanes per block, then in fp64 (tests/stats_reference.py holds
    # it to 1e-6 relative); the reference sums in fp64 throughout.
    return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)


@pytest.fixture(autouse=True)
def _no_leftover_monitors():
    yield
    import gc

    gc.collect()


def test_every_step_matches_float64_reference_across_flushes():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    refs = []
    with GradientMonitor(net, flush_every=2) as monitor:
        for step in range(5):
            backward(net, step)
            refs.append((ref_param_l2(net), ref_block_l2(net), ref_global_l2(net)))
            assert monitor.step() is True
            opt.step()
            opt.zero_grad()
        history = monitor.history
    assert history.steps.tolist() == [1, 2, 3, 4, 5]
    assert list(history.blocks) == BLOCKS
    names = list(history.param_names)
    for t, (params, blocks, total) in enumerate(refs):
        for i, name in enumerate(names):
            if name.startswith("unused"):
                assert not history.present[t, i] and math.isnan(history.param_l2()[t, i])
            else:
                assert close(history.param_l2()[t, i].item(), params[name])
        for b, name in enumerate(history.blocks):
            assert close(history.block_l2()[t, b].item(), blocks[name])
        assert close(history.global_l2()[t].item(), total)


@pytest.mark.parametrize("wrap", ["compile", "data-parallel", "both"])
def test_wrapped_models_keep_their_own_names(wrap):
    # torch.compile and (Distributed)DataParallel rename every parameter ("_orig_mod.", "module."): the monitor
    # names, matches params= patterns and groups blocks by the wrapped model's names, and measures the same numbers.
    net = make()
    wrapped = net
    if wrap in ("data-parallel", "both"):
        if torch.cuda.is_available():
            pytest.skip("DataParallel would replicate the CPU model onto the GPU")
        wrapped = nn.DataParallel(wrapped)  # without a GPU it calls the model as it is
    if wrap in ("compile", "both"):
        wrapped = torch.compile(wrapped, backend="aot_eager")
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05)
    with GradientMonitor(wrapped, opt, params=["layers.*", "head.*"]) as monitor:
        refs = []
        for step in range(2):
            backward(wrapped, step)
            refs.append(torch.linalg.vector_norm(torch.cat([p.grad.double().reshape(-1) for n, p in net.named_parameters()
                                                            if n.startswith(("layers.", "head."))])).item())
            opt.step()
            opt.zero_grad()
        with pytest.raises(UsageError, match="already attached"):
            GradientMonitor(net)  # the same model under another name
        history = monitor.history
    assert list(history.blocks) == BLOCKS
    assert list(history.param_names) == [n for n, _ in net.named_parameters() if n.startswith(("layers.", "head."))]
    for t, total in enumerate(refs):
        assert close(history.global_l2()[t].item(), total)


@pytest.mark.parametrize("optimizer", ["sgd", "lbfgs"])
def test_a_closure_step_records_the_gradient_its_closure_computed(optimizer):
    # The step pre-hook runs before the closure's backward: recording there would read the previous step.
    net = make()
    params = [p for n, p in net.named_parameters() if not n.startswith("unused")]
    opt = (torch.optim.SGD(params, lr=0.05) if optimizer == "sgd"
           else torch.optim.LBFGS(params, lr=0.05, max_iter=3))  # evaluates the closure up to 4 times a step
    applied = []
    with GradientMonitor(net, opt) as monitor:
        for step in range(3):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)

            def closure():
                opt.zero_grad()
                loss = ((net(x) - y) ** 2).mean()
                loss.backward()
                evaluations.append(ref_global_l2(net))
                return loss

            evaluations = []
            if optimizer == "sgd":
                opt.step(closure)
            else:
                opt.step(closure=closure)
            applied.append(evaluations[-1])  # the gradient the step ended with
        history = monitor.history
    assert history.steps.tolist() == [1, 2, 3]
    for t, total in enumerate(applied):
        assert close(history.global_l2()[t].item(), total)


def test_a_closure_that_raises_leaves_the_next_plain_step_recorded_once():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)

    def broken():
        raise RuntimeError("the data loader broke")

    with GradientMonitor(net, opt) as monitor:
        with pytest.raises(RuntimeError, match="data loader"):
            opt.step(broken)
        backward(net, 0)
        opt.step()
        assert monitor.history.steps.tolist() == [1]


def test_wrappers_inside_the_model_leave_its_names_alone():
    # Activation checkpointing's wrapper and a compiled block add "_checkpoint_wrapped_module." and "_orig_mod."
    # inside the names (FSDP1 adds "_fsdp_wrapped_module.", tests/test_distributed.py): the names, blocks and the
    # execution order are the plain model's.
    from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper

    plain, net = make(reverse=True), make(reverse=True)
    net.layers[1] = checkpoint_wrapper(net.layers[1])
    net.layers[2] = torch.compile(net.layers[2], backend="aot_eager")
    assert any("_checkpoint_wrapped_module" in n for n, _ in net.named_parameters())
    with GradientMonitor(net, params=["layers.1.*", "layers.2.*", "head.*"]) as monitor:
        backward(net, 0)
        monitor.step()
        history = monitor.history
    assert list(history.blocks) == ["layers.2", "layers.1"]  # the monitored ones, in the order they ran
    assert list(history.param_names) == [n for n, _ in plain.named_parameters() if n.startswith(("layers.1.",
                                                                                                  "layers.2.", "head."))]
    backward(plain, 0)
    ref = ref_block_l2(plain)
    for b, block in enumerate(history.blocks):
        assert close(history.block_l2()[0, b].item(), ref[block])


def test_a_peft_model_is_named_as_the_model_its_adapters_are_in():
    peft = pytest.importorskip("peft")
    net = make()
    wrapped = peft.get_peft_model(net, peft.LoraConfig(r=2, target_modules=["layers.0.0", "layers.3.0"]))
    with GradientMonitor(wrapped) as monitor:
        backward(wrapped, 0)
        monitor.step()
        history = monitor.history
    trainable = [n for n, p in net.named_parameters() if p.requires_grad]
    assert list(history.param_names) == trainable and all(".lora_" in n for n in trainable)
    assert list(history.blocks) == ["layers.0", "layers.3"]  # those with adapters; not base_model.model.layers.0
    grads = torch.cat([p.grad.double().reshape(-1) for p in net.parameters() if p.requires_grad])
    assert close(history.global_l2()[0].item(), torch.linalg.vector_norm(grads).item())


def test_block_rows_match_reference_mean_std_max():
    net = make()
    monitor = GradientMonitor(net)
    backward(net, 0)
    monitor.step()
    rows = [r for r in monitor.history.rows() if r["block"] == "layers.2"]
    g = torch.cat([p.grad.double().reshape(-1) for n, p in net.named_parameters() if n.startswith("layers.2.")])
    # a mean may cancel to near zero: its error is bounded relative to mean |g|
    assert math.isclose(rows[0]["grad_mean"], g.mean().item(), abs_tol=1e-6 * g.abs().mean().item())
    assert close(rows[0]["grad_std"], g.std(unbiased=False).item())
    assert rows[0]["grad_maxabs"] == g.abs().max().item()
    assert rows[0]["depth"] == 2 and rows[0]["grad_nonfinite"] == 0
    monitor.close()


def test_every_samples_multiples_of_every():
    net = make()
    with GradientMonitor(net, every=3) as monitor:
        recorded = []
        for _ in range(7):
            backward(net, 0)
            recorded.append(monitor.step())
            net.zero_grad()
        assert recorded == [False, False, True, False, False, True, False]
        assert monitor.history.steps.tolist() == [3, 6]


def test_optimizer_hook_sees_the_accumulated_gradient():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    refs = []
    with GradientMonitor(net, opt) as monitor:
        for step in range(3):
            for micro in range(2):  # two micro-batches per optimizer step
                backward(net, 10 * step + micro, scale=0.5)
            refs.append(ref_block_l2(net))
            opt.step()
            opt.zero_grad()
        history = monitor.history
        with pytest.raises(UsageError, match="step hook"):
            monitor.step()
    assert history.steps.tolist() == [1, 2, 3]
    for t, ref in enumerate(refs):
        for b, name in enumerate(history.blocks):
            assert close(history.block_l2()[t, b].item(), ref[name])


def test_clip_grad_norm_matches_torch_and_records_pre_and_post_clip():
    net, twin = make(), make()
    backward(net, 0)
    backward(twin, 0)
    torch_total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
    with GradientMonitor(net) as monitor:
        pre = ref_global_l2(net)
        total = monitor.clip_grad_norm_(0.1)
        post = ref_global_l2(net)
        history = monitor.history
    assert math.isclose(total.item(), torch_total.item(), rel_tol=1e-6)
    assert total.dtype == torch_total.dtype == torch.float32 and total.shape == torch_total.shape == ()
    for (_, p), (_, q) in zip(net.named_parameters(), twin.named_parameters()):
        if p.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    assert close(history.global_l2()[0].item(), pre)
    assert math.isclose(history.post_clip_l2[0].item(), post, rel_tol=1e-6)
    assert post < pre


def test_clip_with_optimizer_hook_records_once_per_step():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    with GradientMonitor(net, opt) as monitor:
        for step in range(2):
            backward(net, step)
            monitor.clip_grad_norm_(0.1)
            opt.step()
            opt.zero_grad()
        history = monitor.history
    assert history.steps.tolist() == [1, 2]
    assert (history.post_clip_l2 < history.global_l2()).all()


def test_grad_scaler_statistics_are_of_the_unscaled_gradient():
    net, plain = make(), make()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 12)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)
    scaler.scale(((net(x) - y) ** 2).mean()).backward()
    ((plain(x) - y) ** 2).mean().backward()
    expected = ref_block_l2(plain)

    before = GradientMonitor(net, scaler=scaler)  # before unscale_: divides by the scale
    before.step()
    hist_before = before.history
    before.close()
    scaler.unscale_(opt)
    after = GradientMonitor(net)  # the recommended way: after unscale_, nothing to pass
    after.step()
    hist_after = after.history
    after.close()
    for b, name in enumerate(hist_before.blocks):
        assert math.isclose(hist_before.block_l2()[0, b].item(), expected[name], rel_tol=1e-6)
        assert math.isclose(hist_after.block_l2()[0, b].item(), expected[name], rel_tol=1e-6)
    # maxabs scales exactly (power-of-two scale)
    assert torch.equal(hist_before.table[..., 3], hist_after.table[..., 3])


@pytest.mark.parametrize("with_optimizer", [True, False])
def test_grad_scaler_does_not_divide_twice(with_optimizer):
    net, plain = make(), make()
    opt = torch.optim.SGD(net.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)
    ((plain(x) - y) ** 2).mean().backward()
    with GradientMonitor(net, opt if with_optimizer else None, scaler=scaler) as monitor:
        scaler.scale(((net(x) - y) ** 2).mean()).backward()
        if with_optimizer:
            scaler.step(opt)  # unscales, then steps: the hook sees unscaled gradients
            scaler.update()
        else:
            scaler.unscale_(opt)
            monitor.step()  # after unscale_, with the scaler passed anyway
        history = monitor.history
    assert math.isclose(history.global_l2()[0].item(), ref_global_l2(plain), rel_tol=1e-6)


def _nan_grad_at(net: Net, block: int) -> None:
    net.layers[block][0].weight.register_hook(lambda g: torch.full_like(g, math.nan))


def test_nonfinite_warning_names_the_first_block_in_execution_order():
    # Registered layers.0..3 but run 3, 2, 1, 0: execution order puts layers.3 first.
    net = make(reverse=True)
    _nan_grad_at(net, 3)
    _nan_grad_at(net, 1)
    monitor = GradientMonitor(net)
    backward(net, 0)
    with pytest.warns(RuntimeWarning, match=r"first block \(execution order\): layers\.3"):
        monitor.step()
        monitor.flush()
    assert list(monitor.history.blocks) == ["layers.3", "layers.2", "layers.1", "layers.0"]
    assert monitor.history.nonfinite_blocks(0) == ["layers.3", "layers.1"]
    monitor.close()


def test_nonfinite_born_in_backward_names_the_deepest_block():
    class NaNBackward(nn.Module):  # finite forward; 0 * d/dx sqrt(0) = NaN in the backward pass
        def forward(self, h):
            return h + 0 * torch.sqrt(h - h.detach())

    net = make()
    net.layers[2].append(NaNBackward())
    monitor = GradientMonitor(net, on_nonfinite="raise")
    backward(net, 0)
    with pytest.raises(GradscopeError, match=r"first block \(execution order\): layers\.0.*deepest is layers\.2"):
        monitor.step()
    history = monitor.history  # the offending step was recorded before raising
    assert history.nonfinite_blocks(0) == ["layers.0", "layers.1", "layers.2"]
    assert math.isnan(history.global_l2()[0].item())
    monitor.close()


@pytest.mark.parametrize("recovers", [True, False])
def test_a_report_with_nonfinite_steps_has_a_finding_naming_the_first_step_and_block(recovers):
    net = make()
    with GradientMonitor(net, on_nonfinite="ignore") as monitor:
        for step in range(1, 5):
            backward(net, step)
            if step == 2 or (step == 4 and not recovers):
                net.layers[1][0].weight.grad[0, 0] = math.nan
            if step == 3:
                net.layers[2][0].bias.grad[:] = math.inf
            monitor.step()
            net.zero_grad()
        report = monitor.report()
    assert report.findings == [{
        "variant": "training", "severity": "warning" if recovers else "error", "kind": "non-finite",
        "block": "layers.1",
        "message": f"non-finite gradient values at {2 if recovers else 3} of 4 recorded step(s), first at step 2 in "
                   "block layers.1" + ("" if recovers else "; the last recorded step has them too"),
        "evidence": "1 non-finite value(s) at step 2; first block (execution order): layers.1",
        "fix": "Check the inputs and the loss for NaN/Inf, lower the learning rate, or, in float16 training, use a "
               "GradScaler (it skips such steps) or bfloat16",
    }]
    severity = report.findings[0]["severity"]
    assert f"- **{severity}** (training): non-finite gradient values at" in render_markdown(report)


def test_a_step_whose_every_value_is_nonfinite_names_no_block_in_its_finding():
    net = make()
    with GradientMonitor(net, on_nonfinite="ignore") as monitor:
        backward(net, 1)
        grads = [p.grad for p in net.parameters() if p.grad is not None]
        for g in grads:  # what a clip with a NaN total norm does: every gradient times NaN
            g.mul_(math.nan)
        monitor.step()
        report = monitor.report()
    (finding,) = report.findings
    total = sum(g.numel() for g in grads)
    assert finding["block"] is None
    assert finding["message"] == "non-finite gradient values at 1 of 1 recorded step(s), first at step 1; " \
                                 "the last recorded step has them too"
    assert finding["evidence"].startswith(f"{total} non-finite value(s) at step 1; every gradient value is "
                                          "non-finite, so where it began cannot be read from this step")


def test_ignore_records_without_warning():
    net = make()
    _nan_grad_at(net, 0)
    with GradientMonitor(net, on_nonfinite="ignore") as monitor:
        backward(net, 0)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            monitor.step()
            monitor.flush()
        assert monitor.latest()["nonfinite"] == 64


def test_frozen_and_selected_parameters():
    net = make()
    net.inp.requires_grad_(False)
    with GradientMonitor(net, params=["layers.*.0.weight", "head.bias"]) as monitor:
        assert monitor.param_names == ("layers.0.0.weight", "layers.1.0.weight", "layers.2.0.weight",
                                       "layers.3.0.weight", "head.bias")
        assert set(monitor.frozen) == {"inp.weight", "inp.bias"}
        backward(net, 0)
        monitor.step()
        ref = {n: torch.linalg.vector_norm(p.grad.double()).item() for n, p in net.named_parameters()
               if n in monitor.param_names}
        l2 = monitor.history.param_l2()[0].tolist()
    assert all(close(v, ref[n]) for n, v in zip(monitor.param_names, l2))
    with pytest.raises(UsageError, match="close matches: head.bias"):
        GradientMonitor(net, params=["head.bais"])
    # under a wrapper the user's own names carry its prefix: the message shows the names patterns match
    with pytest.raises(UsageError, match=r"'module\.layers\.\*' matches no trainable parameter; the trainable "
                                         r"names are layers\.0\.0\.weight, layers\.0\.0\.bias, layers\.1\.0\.weight, \.\.\.$"):
        GradientMonitor(nn.DataParallel(net), params=["module.layers.*"])
    with pytest.raises(UsageError, match="only frozen"):
        GradientMonitor(net, params=["inp.*"])
    with pytest.raises(UsageError, match="no trainable parameters"):
        GradientMonitor(nn.Linear(2, 2).requires_grad_(False))


def test_missing_gradients_are_absent_not_zero():
    net = make()
    with GradientMonitor(net) as monitor:
        net.head(torch.randn(3, 8)).sum().backward()  # only the head gets a gradient
        monitor.step()
        history = monitor.history
    assert torch.isnan(history.block_l2()).all()
    rows = [r for r in history.rows() if r["block"] == "layers.0"]
    assert rows[0]["params_no_grad"] == 2 and math.isnan(rows[0]["grad_l2"])
    assert close(history.global_l2()[0].item(), ref_global_l2(net))


def test_attached_twice_is_refused_until_closed():
    net = make()
    first = GradientMonitor(net)
    with pytest.raises(UsageError, match="already attached"):
        GradientMonitor(net)
    first.close()
    GradientMonitor(net).close()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with GradientMonitor(net, opt) as monitor, pytest.raises(UsageError, match="already attached to an optimizer"):
        monitor.attach(opt)


def test_empty_history_flush_and_report():
    net = make()
    with GradientMonitor(net) as monitor:
        assert monitor.flush() == 0
        with pytest.raises(UsageError, match=r"call monitor.step\(\) after loss.backward"):
            monitor.report()
    with GradientMonitor(net, every=5) as monitor:
        backward(net, 0)
        monitor.step()
        with pytest.raises(UsageError, match="every=5"):
            monitor.history


def test_before_the_first_step_a_monitor_with_an_optimizer_says_to_wait_for_it():
    net = make()
    with GradientMonitor(net, torch.optim.SGD(net.parameters(), lr=0.1)) as monitor:
        with pytest.raises(UsageError) as error:
            monitor.latest()
    assert str(error.value) == ("no step recorded yet: the monitor records at each optimizer.step(); read it after "
                                "the first optimizer.step()")


def test_replaced_parameters_are_refused_at_flush():
    net = make()
    monitor = GradientMonitor(net)
    backward(net, 0)
    monitor.step()
    net.head.weight = nn.Parameter(net.head.weight.detach().clone())
    with pytest.raises(UsageError, match="parameters were replaced"):
        monitor.flush()
    monitor.close()


def test_model_moved_to_gpu_keeps_recording(cuda_device):
    net = make()
    with GradientMonitor(net) as monitor:
        backward(net, 0)
        monitor.step()
        net.to(cuda_device)
        g = torch.Generator().manual_seed(1)
        x = torch.randn(6, 4, generator=g).to(cuda_device)
        net(x).sum().backward()
        monitor.step()
        history = monitor.history
        assert history.steps.tolist() == [1, 2]
        assert close(history.global_l2()[1].item(), ref_global_l2(net))


def test_report_carries_the_time_series_and_round_trips(tmp_path):
    from gradscope.report import Report

    net = make()
    with GradientMonitor(net) as monitor:
        for step in range(3):
            backward(net, step)
            monitor.step()
            net.zero_grad()
        report = monitor.report()
    assert report.meta["kind"] == "monitor" and report.meta["steps_recorded"] == 3
    assert report.findings == []  # every gradient was finite
    per_block = [r for r in report.series if r["block"] is not None]
    assert len(per_block) == 3 * 4 and {r["step"] for r in per_block} == {1, 2, 3}
    assert [r["block"] for r in report.blocks] == BLOCKS
    report.save(tmp_path)
    loaded = Report.load(tmp_path)
    assert loaded.series[0]["block"] == "layers.0" and len(loaded.series) == len(report.series)


class FakeWriter:
    def __init__(self):
        self.scalars, self.histograms = [], []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def add_histogram(self, tag, values, step):
        self.histograms.append((tag, values, step))


def test_log_to_writes_block_scalars_and_histograms():
    net = make()
    writer = FakeWriter()
    with GradientMonitor(net) as monitor:
        monitor.log_to(writer, histograms=True)
        backward(net, 0)
        ref = ref_block_l2(net)
        monitor.clip_grad_norm_(0.01)
    tags = {tag: (value, step) for tag, value, step in writer.scalars}
    for block in BLOCKS:
        assert close(tags[f"gradscope/grad_norm/{block}"][0], ref[block])
    assert tags["gradscope/grad_norm_post_clip/global"][1] == 1
    assert [tag for tag, _, _ in writer.histograms] == [f"gradscope/grad/{b}" for b in BLOCKS]


def test_log_to_a_real_summary_writer(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed")
    from torch.utils.tensorboard import SummaryWriter
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    net = make()
    writer = SummaryWriter(tmp_path)
    with GradientMonitor(net) as monitor:
        monitor.log_to(writer)
        for step in range(2):
            backward(net, step)
            monitor.step()
            net.zero_grad()
    writer.close()
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    assert "gradscope/grad_norm/layers.3" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("gradscope/grad_norm/global")] == [1, 2]


def test_public_name_is_lazy():
    assert gradscope.GradientMonitor is GradientMonitor


def test_raise_from_the_optimizer_hook_stops_the_update():
    net = make()
    _nan_grad_at(net, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    before = [p.detach().clone() for p in net.parameters()]
    with GradientMonitor(net, opt, on_nonfinite="raise") as monitor:
        backward(net, 0)
        with pytest.raises(GradscopeError, match=r"layers\.1"):
            opt.step()
        assert monitor.history.steps.tolist() == [1]
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


def test_keep_last_bounds_the_host_history():
    net = make()
    with GradientMonitor(net, keep_last=3, flush_every=2, on_nonfinite="ignore") as monitor:
        for step in range(7):
            backward(net, step)
            if step == 5:  # the 6th step
                net.layers[1][0].weight.grad[0, 0] = math.nan
            monitor.step()
            net.zero_grad()
        assert monitor.history.steps.tolist() == [5, 6, 7]
        assert monitor.latest()["step"] == 7
        report = monitor.report()
    assert (report.meta["steps_recorded"], report.meta["steps_kept"], report.meta["series_steps"]) == (7, 3, 3)
    assert "- **steps recorded**: 7 (the last 3 kept)" in render_markdown(report)
    assert report.findings[0]["message"] == ("non-finite gradient values at 1 of the last 3 (of 7) recorded step(s), "
                                             "first at step 6 in block layers.1")


def test_explicit_step_numbers_and_bad_options():
    net = make()
    with GradientMonitor(net, every=10) as monitor:
        backward(net, 0)
        assert monitor.step(step=20) is True
        assert monitor.history.steps.tolist() == [20]
    with pytest.raises(UsageError, match="unknown GradientMonitor option.*evry"):
        GradientMonitor(net, evry=2)
    with pytest.raises(UsageError, match="`on_nonfinite` must be one of"):
        GradientMonitor(net, on_nonfinite="panic")


def test_grad_scaler_overflow_is_counted_as_the_scaler_sees_it():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.05)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)  # scaled gradients above 3.4e38 overflow
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)
    scaler.scale(1e3 * ((net(x) - y) ** 2).mean()).backward()
    with GradientMonitor(net, scaler=scaler, on_nonfinite="ignore") as monitor:
        monitor.step()
        nonfinite = monitor.latest()["nonfinite"]
    scaler.unscale_(opt)
    found_inf = sum(v.item() for v in scaler._found_inf_per_device(opt).values())
    assert nonfinite > 0 and found_inf > 0  # the step the scaler will skip is flagged, not hidden


def test_parameters_unfrozen_later_join_and_are_clipped():
    net, twin = make(), make()
    for m in (net, twin):
        m.inp.requires_grad_(False)
    with GradientMonitor(net) as monitor:
        backward(net, 0)
        monitor.step()
        net.zero_grad()
        for m in (net, twin):
            m.inp.requires_grad_(True)  # unfrozen mid-training
            backward(m, 1)
        torch_total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.05)
        pre = ref_global_l2(net)
        total = monitor.clip_grad_norm_(0.05)
        history = monitor.history
        assert monitor.frozen == []
    assert math.isclose(total.item(), torch_total.item(), rel_tol=1e-6) and math.isclose(total.item(), pre,
                                                                                          rel_tol=1e-6)
    for p, q in zip(net.parameters(), twin.parameters()):  # the unfrozen layer was clipped too
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    assert history.param_names[:2] == ("inp.weight", "inp.bias")  # model order
    assert not history.present[0, :2].any() and history.present[1, :2].all()  # step 1: no gradient there
    assert torch.isnan(history.param_l2()[0, :2]).all()
    assert close(history.param_l2()[1, 0].item(), torch.linalg.vector_norm(twin.inp.weight.grad.double()).item()
                 / (0.05 / (torch_total.item() + 1e-6)))
    assert close(history.global_l2()[1].item(), pre)


class WithExtra(Net):
    """Net, and a layer added after the monitor was made (a new head, a LoRA-style branch) when it exists."""

    def forward(self, x):
        out = super().forward(x)
        return out + self.extra(x).sum(-1, keepdim=True) if hasattr(self, "extra") else out


@pytest.mark.parametrize("where", ["module", "parameter"])
def test_parameters_added_to_the_model_later_join_and_are_clipped_as_torch_would(where):
    torch.manual_seed(0)
    net = WithExtra()
    twin = copy.deepcopy(net)
    with GradientMonitor(net) as monitor:
        backward(net, 0)
        monitor.step()
        net.zero_grad()
        for m in (net, twin):  # the same new weights in both
            torch.manual_seed(1)
            if where == "module":
                m.extra = nn.Linear(4, 3)  # a submodule registered after the monitor
            else:
                m.layers[0][0].register_parameter("scale", nn.Parameter(torch.ones(1)))
                m.layers[0][0].register_forward_hook(lambda mod, args, out: out * mod.scale)
            backward(m, 1)
        torch_total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.05)
        total = monitor.clip_grad_norm_(0.05)
        history = monitor.history
    new = ["extra.weight", "extra.bias"] if where == "module" else ["layers.0.0.scale"]
    assert set(new) <= set(history.param_names)
    assert math.isclose(total.item(), torch_total.item(), rel_tol=1e-6)
    for p, q in zip(net.parameters(), twin.parameters()):  # the new ones were clipped too
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    column = [history.param_names.index(n) for n in new]
    assert not history.present[0, column].any() and history.present[1, column].all()  # step 1: not there yet


def test_a_step_with_no_new_parameter_does_not_walk_the_model(monkeypatch):
    import gradscope.monitor.parameters as parameters_module

    net = make()
    with GradientMonitor(net) as monitor:
        walks = []
        real = parameters_module.named_parameters
        monkeypatch.setattr(parameters_module, "named_parameters", lambda m: walks.append(1) or real(m))
        for seed in range(3):
            backward(net, seed)
            monitor.step()
        assert walks == []
        net.extra = nn.Linear(2, 2)  # a registration: the next step looks
        backward(net, 3)
        monitor.step()
        looked = len(walks)
        backward(net, 4)
        monitor.step()  # and the one after it does not look again
        assert looked > 0 and len(walks) == looked


def test_unfrozen_parameters_outside_params_stay_out():
    net = make()
    net.inp.requires_grad_(False)
    with GradientMonitor(net, params=["layers.*"]) as monitor:
        net.inp.requires_grad_(True)
        backward(net, 0)
        monitor.step()
        assert all(n.startswith("layers.") for n in monitor.param_names) and monitor.frozen == []


def test_clip_with_a_params_subset_clips_every_trainable_parameter():
    net, twin = make(), make()
    backward(net, 0)
    backward(twin, 0)
    torch_total = torch.nn.utils.clip_grad_norm_(twin.parameters(), 0.1)
    with GradientMonitor(net, params=["layers.*"]) as monitor:
        subset_pre = torch.linalg.vector_norm(torch.cat([p.grad.double().reshape(-1)
                                                         for n, p in net.named_parameters()
                                                         if n.startswith("layers.")])).item()
        total = monitor.clip_grad_norm_(0.1)
        history = monitor.history
    assert math.isclose(total.item(), torch_total.item(), rel_tol=1e-6)
    for p, q in zip(net.parameters(), twin.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-6, atol=1e-9)
    coef = 0.1 / (torch_total.item() + 1e-6)
    assert close(history.global_l2()[0].item(), subset_pre)
    assert math.isclose(history.post_clip_l2[0].item(), subset_pre * coef, rel_tol=1e-6)


def test_nonfinite_block_and_parameter_norms_are_nan_as_torch():
    net = make()
    _nan_grad_at(net, 2)
    with GradientMonitor(net, on_nonfinite="ignore") as monitor:
        backward(net, 0)
        monitor.step()
        history, latest = monitor.history, monitor.latest()
    b = history.blocks.index("layers.2")
    assert math.isnan(history.block_l2()[0, b].item()) and math.isnan(latest["blocks"]["layers.2"])
    assert torch.isnan(torch.linalg.vector_norm(net.layers[2][0].weight.grad))  # what torch says
    assert math.isnan(history.param_l2()[0, history.param_names.index("layers.2.0.weight")].item())
    assert not math.isnan(latest["blocks"]["layers.0"])
    row = [r for r in history.rows() if r["block"] == "layers.2"][0]
    assert math.isnan(row["grad_l2"]) and row["grad_nonfinite"] == 64


def test_a_step_without_any_gradient_has_no_global_norm():
    with GradientMonitor(make()) as monitor:
        monitor.step()  # before any backward
        assert math.isnan(monitor.latest()["global"])


def test_bad_optimizer_or_scaler_is_refused_and_leaves_nothing_behind():
    net, other = make(), make(seed=1)
    scaler = torch.amp.GradScaler("cpu")
    with pytest.raises(UsageError, match="`optimizer` must be a torch.optim.Optimizer; got GradScaler.*`scaler`"):
        GradientMonitor(net, scaler)
    with pytest.raises(UsageError, match="`scaler` must be a torch.amp.GradScaler; got SGD"):
        GradientMonitor(net, scaler=torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(UsageError, match="holds none of the monitored parameters"):
        GradientMonitor(net, torch.optim.SGD(other.parameters(), lr=0.1))
    assert not net._forward_pre_hooks and not any(m._forward_pre_hooks for m in net.modules())
    GradientMonitor(net).close()  # the corrected call is not refused as "already attached"


def test_a_long_run_report_keeps_a_bounded_series_with_every_incident():
    net = make()
    with GradientMonitor(net, on_nonfinite="ignore", flush_every=16) as monitor:
        for step in range(1, 51):
            net.zero_grad()
            backward(net, step, scale=100.0 if step == 23 else 1.0)
            if step == 37:
                net.layers[1][0].weight.grad[0, 0] = math.inf
            monitor.step()
        report = monitor.report(max_series_steps=10)
        full = monitor.report(max_series_steps=None)
    steps = sorted({r["step"] for r in report.series})
    assert {1, 23, 37, 50} <= set(steps)  # first, largest norm, non-finite, last
    assert set(range(1, 51, 5)) <= set(steps) and len(steps) <= 13
    assert report.meta["series_steps"] == len(steps) and report.meta["steps_recorded"] == 50
    assert sorted({r["step"] for r in full.series}) == list(range(1, 51)) and full.meta["series_steps"] == 50
    kept = {(r["step"], r["block"]): r["grad_l2"] for r in report.series}
    every = {(r["step"], r["block"]): r["grad_l2"] for r in full.series}
    assert all(every[k] == v or (math.isnan(v) and math.isnan(every[k])) for k, v in kept.items())


def test_parameters_unfrozen_while_a_flush_fails_still_join_at_the_next_step():
    net = make()
    net.inp.requires_grad_(False)
    with GradientMonitor(net) as monitor:  # on_nonfinite="warn": the NaN step warns at its flush
        backward(net, 0)
        net.layers[1][0].weight.grad[0, 0] = math.nan
        monitor.step()
        net.zero_grad()
        net.inp.requires_grad_(True)
        backward(net, 1)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the flush the joining parameters cause raises
            with pytest.raises(RuntimeWarning, match="non-finite"):
                monitor.step()
        monitor.step()
        history = monitor.history
    assert monitor.frozen == [] and history.param_names[:2] == ("inp.weight", "inp.bias")
    assert not history.present[0, :2].any() and history.present[-1, :2].all()


@pytest.mark.parametrize("limit", [0, -3, 2.5])
def test_report_refuses_a_series_limit_that_is_not_a_positive_integer(limit):
    with GradientMonitor(make()) as monitor:
        for step in range(3):
            backward(monitor.model, step)
            monitor.step()
        with pytest.raises(UsageError, match=f"`max_series_steps` must be None or a positive integer; got {limit}"):
            monitor.report(max_series_steps=limit)


def test_mixed_unscaled_optimizers_are_refused_and_the_step_is_not_counted():
    net = make()
    body = [p for n, p in net.named_parameters() if not n.startswith("head.")]
    opt_body, opt_head = torch.optim.SGD(body, lr=0.0), torch.optim.SGD(net.head.parameters(), lr=0.0)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 6)
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(6, 4, generator=g), torch.randn(6, 1, generator=g)
    with GradientMonitor(net, scaler=scaler) as monitor:
        scaler.scale(((net(x) - y) ** 2).mean()).backward()
        scaler.unscale_(opt_body)  # and not opt_head: the gradients are a mix
        scaler._per_optimizer_states[id(opt_head)]  # the scaler has seen opt_head (still scaled)
        with pytest.raises(UsageError, match="unscaled the gradients of some optimizers but not of others"):
            monitor.step()
        scaler.unscale_(opt_head)
        assert monitor.step() is True  # now all unscaled: recorded, as step 1
        assert monitor.history.steps.tolist() == [1]


def test_a_callback_stopped_by_an_error_in_sharded_mode_reports_the_flushed_steps_without_a_collective(tmp_path):
    from gradscope.integrations._options import MonitorCallbackOptions
    from gradscope.report import Report

    callback = MonitorCallbackOptions(report_dir=tmp_path / "report", flush_every=8)
    net = make()
    callback.monitor = callback.make_monitor(net)
    for step in range(3):
        backward(net, step)
        callback.monitor.step()
    callback.monitor.flush()
    backward(net, 3)
    callback.monitor.step()  # recorded, not flushed
    callback.monitor.mode = "sharded"  # as under FSDP, where a flush is a collective the other ranks may not join
    callback.finish({}, write=True, error=RuntimeError("rank 1 ran out of memory"))
    report = Report.load(tmp_path / "report")
    assert sorted({r["step"] for r in report.series}) == [1, 2, 3]  # the step after the last flush is dropped
    assert report.meta["stopped_by"] == "RuntimeError: rank 1 ran out of memory"
    assert callback.monitor is None
    GradientMonitor(net).close()  # the model is free again


def test_drop_unflushed_keeps_the_flushed_history():
    net = make()
    monitor = GradientMonitor(net, flush_every=8)
    for step in range(5):
        backward(net, step)
        monitor.step()
        if step == 2:
            monitor.flush()
    assert monitor.drop_unflushed() == 2 and monitor.drop_unflushed() == 0
    assert monitor.history.steps.tolist() == [1, 2, 3]
    monitor.close(flush=False)


@pytest.mark.parametrize("mark", ["ds_id", "_hp_mapping"])
def test_a_model_whose_gradients_deepspeed_zero_holds_needs_its_engine_not_recorded_as_nan(mark):
    net = make()
    setattr(next(net.parameters()), mark, 0)  # what deepspeed.initialize leaves on the parameters it manages
    with pytest.raises(UsageError, match=r"^the model's parameters are managed by DeepSpeed ZeRO, whose gradients are "
                                         r"not in param\.grad: pass the engine deepspeed\.initialize returned "
                                         r"\(GradientMonitor\(engine\)\)"):
        GradientMonitor(net)


def test_an_instance_wrap_gives_back_what_was_there_unless_replaced_since():
    from gradscope.monitor.hooks import InstanceWrap

    class Owner:
        def step(self):
            return "class"

    owner = Owner()
    wrap = InstanceWrap(owner, "step", lambda: "wrapped")
    assert owner.step() == "wrapped"
    wrap.remove()
    assert owner.step() == "class" and "step" not in vars(owner)  # the class's method shows again
    owner.step = lambda: "own"
    InstanceWrap(owner, "step", lambda: "wrapped").remove()
    assert owner.step() == "own"  # an instance attribute set before comes back
    wrap = InstanceWrap(owner, "step", lambda: "wrapped")
    owner.step = lambda: "later"  # someone else's, set after ours: removing ours leaves it
    wrap.remove()
    assert owner.step() == "later"


# --- the package's seams: typed records, the public interface the integrations use -----------------------------

def _chunk(steps: list[int], params: int = 2, blocks: int = 1, start: float = 0.0):
    from gradscope.monitor.history import HistoryChunk

    t = len(steps)
    values = torch.arange(t * params, dtype=torch.float64).reshape(t, params) + start
    return HistoryChunk(steps=torch.tensor(steps), table=values[..., None].expand(t, params, 6).clone(),
                        numel=torch.full((t, params), 3), present=torch.ones((t, params), dtype=torch.bool),
                        post_clip_l2=torch.full((t,), math.nan), clip_max_norm=torch.full((t,), math.nan),
                        weight_sumsq=values.clone(), update_sumsq=values.clone(),
                        act_grad_sumsq=torch.zeros((t, blocks), dtype=torch.float64))


def test_a_history_chunk_joins_keeps_its_tail_and_widens_to_new_parameter_rows():
    from gradscope.monitor.history import HistoryChunk

    first, second = _chunk([1, 2]), _chunk([3], start=100.0)
    joined = HistoryChunk.cat([first, second])
    assert len(joined) == 3 and joined.steps.tolist() == [1, 2, 3]
    assert joined.table[2, 1, 0].item() == 101.0
    assert joined.tail(2).steps.tolist() == [2, 3] and joined.tail(5).steps.tolist() == [1, 2, 3]
    wide = first.widened([1, -1, 0])  # the old rows swapped, a newcomer between them
    assert wide.table.shape == (2, 3, 6) and wide.table[:, 0].equal(first.table[:, 1])
    assert not wide.present[:, 1].any() and wide.numel[:, 1].eq(0).all() and wide.table[:, 1].eq(0).all()
    assert wide.weight_sumsq[:, 1].isnan().all() and wide.update_sumsq[:, 1].isnan().all()
    assert wide.steps is first.steps and wide.act_grad_sumsq is first.act_grad_sumsq  # per step, not per parameter
    empty = HistoryChunk.empty(params=2, registered_blocks=4)
    assert len(empty) == 0 and empty.table.shape == (0, 2, 6) and empty.act_grad_sumsq.shape == (0, 4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.steps = torch.tensor([9])


def test_the_history_store_counts_every_step_and_keeps_the_last():
    from gradscope.monitor.history import HistoryStore

    store = HistoryStore(keep_last=3)
    assert not store and store.whole() is None and store.last() is None
    store.append(_chunk([1, 2]))
    store.append(_chunk([3, 4]))
    assert store.last().steps.tolist() == [3, 4] and store.steps_recorded == 4
    store.trim()
    assert store.whole().steps.tolist() == [2, 3, 4] and store.steps_recorded == 4  # the dropped step still counts
    store.append(_chunk([5]))
    assert store.whole().steps.tolist() == [2, 3, 4, 5]
    assert store.last().steps.tolist() == [2, 3, 4, 5]  # joined once: later reads do not join again


def test_the_step_buffer_names_each_record_and_starts_each_step_unrecorded():
    from gradscope.monitor.recording import RowLayout, StepBuffer, StepRecord

    layout = RowLayout.of(params=2, blocks=3)
    assert (layout.table, layout.weight, layout.update, layout.act) == (slice(0, 12), slice(12, 14),
                                                                          slice(14, 16), slice(16, 19))
    assert layout.post == 19 and layout.width == 20
    buffer = StepBuffer(capacity=2)
    for step in (7, 8):
        slot = buffer.next_slot(2, 3, torch.device("cpu"))
        buffer.table(slot).copy_(torch.full((2, 6), float(step)))
        buffer.put_weights(slot, torch.tensor([1.0, 4.0], dtype=torch.float64))
        buffer.append(StepRecord(step, (True, False), (5, 0)))
    buffer.mark_clipped(1.5, torch.tensor(0.5, dtype=torch.float64))
    assert buffer.full and buffer.holds(1, 8) and not buffer.holds(1, 7)
    assert buffer.pending[1].clip_max_norm == 1.5 and math.isnan(buffer.pending[0].clip_max_norm)
    chunk = buffer.take(sharded=False)
    assert len(buffer) == 0 and chunk.steps.tolist() == [7, 8] and chunk.table[1, 0, 0].item() == 8.0
    assert chunk.present.tolist() == [[True, False]] * 2 and chunk.numel.tolist() == [[5, 0]] * 2
    assert math.isnan(chunk.post_clip_l2[0]) and chunk.post_clip_l2[1].item() == 0.5
    assert chunk.weight_sumsq.tolist() == [[1.0, 4.0]] * 2 and chunk.update_sumsq.isnan().all()
    buffer.next_slot(2, 3, torch.device("cpu"))
    buffer.append(StepRecord(9, (True, True), (5, 5)))
    assert buffer.take(sharded=False).weight_sumsq.isnan().all()  # the next step's optional records start NaN


def test_the_integrations_read_the_monitor_through_its_public_interface():
    from gradscope.monitor import attached_monitor

    net = make()
    monitor = GradientMonitor(net, flush_every=2, keep_last=1)
    assert not monitor.has_records and monitor.recorded_steps == 0 and not monitor.closed
    assert attached_monitor(net) is monitor
    for seed in range(3):
        backward(net, seed)
        monitor.step()
    assert monitor.has_records and monitor.recorded_steps == 3  # two flushed (one kept), one buffered
    monitor.close()
    assert monitor.closed and attached_monitor(net) is None


def test_the_tensorboard_integration_names_the_monitors_own_sinks():
    import gradscope.integrations as integrations
    import gradscope.integrations.tensorboard as tensorboard
    import gradscope.monitor.sinks as sinks

    assert tensorboard.TensorBoardSink is sinks.TensorBoardSink is integrations.TensorBoardSink
    assert tensorboard.CallableSink is sinks.CallableSink and tensorboard.scalars is sinks.scalars


def test_the_public_names_of_the_monitor_module_stay_importable():
    import gradscope.monitor as monitor_package

    for name in ("GradientMonitor", "MonitorConfig", "MonitorHistory", "select_parameters", "attached_monitor",
                 "describe_nonfinite", "nonfinite_findings", "spike_findings", "spike_steps", "series_positions",
                 "SPIKE_FACTOR", "SPIKE_WINDOW", "SPIKE_MIN_HISTORY", "MAX_SERIES_STEPS", "NONFINITE_FIX",
                 "ON_NONFINITE", "CLIP_EPS", "NamedParams"):
        assert hasattr(monitor_package, name), name
    assert gradscope.GradientMonitor is monitor_package.GradientMonitor


def test_a_refusal_that_depends_on_the_optimizer_leaves_no_hook_behind():
    net = make()
    with pytest.raises(UsageError, match="needs the optimizer"):
        GradientMonitor(net, update_ratios=True, activation_grads=True)
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in net.modules())
    GradientMonitor(net).close()
