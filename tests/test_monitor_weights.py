"""The monitor's weight norms, update-to-weight ratios and dL/dh at each block's output during training.

Every number is checked against float64 values computed here from saved copies of the weights and from
``retain_grad`` on the blocks' outputs."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch.utils.checkpoint import checkpoint

from gradscope.errors import UsageError
from gradscope.monitor import GradientMonitor
from stats_reference import update_ratios
from test_monitor import BLOCKS, Net, backward, close, make


def _block_params(weights: dict[str, torch.Tensor], block: str) -> torch.Tensor:
    return torch.cat([w.double().reshape(-1) for n, w in weights.items() if n.startswith(block + ".")])


def _ref_weight_l2(weights: dict[str, torch.Tensor]) -> dict:
    out = {b: torch.linalg.vector_norm(_block_params(weights, b)).item() for b in BLOCKS}
    out["global"] = torch.linalg.vector_norm(torch.cat([w.double().reshape(-1) for w in weights.values()])).item()
    return out


def _weights(net) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in net.named_parameters()}


def test_weight_norms_match_float64_from_the_saved_weights_in_history_latest_and_rows():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    refs = []
    with GradientMonitor(net, weight_norms=True, flush_every=2) as monitor:
        for step in range(5):
            backward(net, step)
            refs.append(_ref_weight_l2(_weights(net)))  # the weights the step reads, before the update
            monitor.step()
            opt.step()
            opt.zero_grad()
        history, latest, rows = monitor.history, monitor.latest(), monitor.history.rows()
    assert list(history.blocks) == BLOCKS
    for t, ref in enumerate(refs):
        assert close(float(history.global_weight_l2()[t]), ref["global"])
        for b, block in enumerate(BLOCKS):
            assert close(float(history.block_weight_l2()[t, b]), ref[block])
    assert close(latest["global_weight_l2"], refs[-1]["global"])
    assert close(latest["weight_l2"]["layers.2"], refs[-1]["layers.2"])
    assert math.isnan(latest["global_update_ratio"])  # not asked for
    row = next(r for r in rows if r["step"] == 3 and r["block"] == "layers.1")
    assert close(row["weight_l2"], refs[2]["layers.1"])
    assert "update_ratio" not in row and "act_grad_l2" not in row
    glob = next(r for r in rows if r["step"] == 3 and r["block"] is None)
    assert close(glob["weight_l2"], refs[2]["global"])


def test_by_default_no_weight_or_activation_series_is_recorded():
    net = make()
    with GradientMonitor(net) as monitor:
        backward(net, 0)
        monitor.step()
        rows, latest = monitor.history.rows(), monitor.latest()
    assert not any({"weight_l2", "update_ratio", "act_grad_l2"} & set(r) for r in rows)
    assert math.isnan(latest["global_weight_l2"]) and all(math.isnan(v) for v in latest["act_grad_l2"].values())


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9, weight_decay=0.01),
    lambda ps: torch.optim.Adam(ps, lr=1e-2),
], ids=["sgd", "adam"])
@pytest.mark.parametrize("clip", [False, True])
@pytest.mark.parametrize("backend", ["auto", "reference"])  # the CPU kernel's one pass, and the foreach path
def test_update_ratios_match_saved_copies_of_the_weights_before_and_after_the_step(make_opt, clip, backend):
    net = make()
    opt = make_opt(net.parameters())
    refs = []
    with GradientMonitor(net, opt, update_ratios=True, flush_every=3, backend=backend) as monitor:
        for step in range(7):
            backward(net, step)
            if clip:
                monitor.clip_grad_norm_(0.05)  # records the step; the optimizer's hook then only finishes it
            before = _weights(net)
            opt.step()  # the monitor records from its hooks
            refs.append((_ref_weight_l2(before), update_ratios(before, _weights(net), BLOCKS)))
            opt.zero_grad()
        history, latest = monitor.history, monitor.latest()
    assert len(history) == 7
    for t, (norms, ratios) in enumerate(refs):
        assert close(float(history.global_weight_l2()[t]), norms["global"])
        assert close(float(history.global_update_ratio()[t]), ratios["global"])
        for b, block in enumerate(BLOCKS):
            assert ratios[block] > 0
            assert math.isclose(float(history.block_update_ratio()[t, b]), ratios[block], rel_tol=1e-5)
    assert math.isclose(latest["update_ratio"]["layers.3"], refs[-1][1]["layers.3"], rel_tol=1e-5)
    rows = history.rows()
    assert math.isclose(next(r for r in rows if r["step"] == 7 and r["block"] is None)["update_ratio"],
                        refs[-1][1]["global"], rel_tol=1e-5)


def test_a_skipped_step_has_an_update_ratio_of_zero():
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with GradientMonitor(net, opt, update_ratios=True, on_nonfinite="skip") as monitor:
        backward(net, 0)
        opt.step()
        backward(net, 1)
        net.layers[1][0].weight.grad[0, 0] = math.nan
        opt.step()
        with pytest.warns(RuntimeWarning, match="The optimizer step was skipped"):
            ratios = monitor.history.global_update_ratio().tolist()
    assert ratios[0] > 0 and ratios[1] == 0.0


@pytest.mark.parametrize("backend", ["auto", "reference"])  # the norms read by the copy, and by the fused call
def test_a_non_finite_weight_reads_nan_in_its_blocks_weight_norm_on_an_update_step(backend):
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with torch.no_grad():
        net.layers[2][0].weight[1, 1] = math.inf
    with GradientMonitor(net, opt, update_ratios=True, on_nonfinite="ignore", backend=backend) as monitor:
        backward(net, 0)
        opt.step()
        norms = monitor.history.block_weight_l2()[0]
    assert math.isnan(norms[BLOCKS.index("layers.2")]) and math.isnan(monitor.history.global_weight_l2()[0])
    assert math.isfinite(norms[BLOCKS.index("layers.0")])


@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_an_update_that_makes_a_weight_non_finite_has_a_nan_ratio(backend):
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with GradientMonitor(net, opt, update_ratios=True, on_nonfinite="ignore", backend=backend) as monitor:
        backward(net, 0)
        opt.step()
        opt.zero_grad()
        backward(net, 1)
        net.layers[1][0].weight.grad[0, 0] = math.inf
        opt.step()
        ratios = monitor.history.block_update_ratio()
    assert bool(torch.isfinite(ratios[0]).all())
    assert math.isnan(ratios[1, BLOCKS.index("layers.1")]) and math.isnan(monitor.history.global_update_ratio()[1])
    assert math.isfinite(ratios[1, BLOCKS.index("layers.0")])


def test_log_to_a_callable_gets_the_weight_update_and_activation_series():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    logged = []
    with GradientMonitor(net, opt, update_ratios=True, activation_grads=True) as monitor:
        monitor.log_to(lambda step, values: logged.append((step, values)))
        refs = _ref_act_grad_l2(net, 0)
        backward(net, 0)
        before = _weights(net)
        opt.step()
        ratios = update_ratios(before, _weights(net), BLOCKS)
    (step, values), = logged
    assert step == 1
    assert close(values["gradscope/weight_norm/layers.0"], _ref_weight_l2(before)["layers.0"])
    assert math.isclose(values["gradscope/update_ratio/global"], ratios["global"], rel_tol=1e-5)
    assert math.isclose(values["gradscope/act_grad_norm/layers.3"], refs[3], rel_tol=1e-5)
    assert "gradscope/act_grad_norm/global" not in values


def test_update_ratios_need_the_optimizer():
    with pytest.raises(UsageError, match=r"`update_ratios=True` needs the optimizer .*`weight_norms=True` records "
                                         r"the weight norms without it"):
        GradientMonitor(make(), update_ratios=True)


# --- dL/dh at each block's output -------------------------------------------------------------------


class CheckpointedNet(Net):
    """``Net`` whose blocks run under activation checkpointing."""

    def __init__(self, use_reentrant: bool):
        super().__init__()
        self.use_reentrant = use_reentrant

    def forward(self, x):
        h = self.inp(x)
        for layer in self.layers:
            h = checkpoint(layer, h, use_reentrant=self.use_reentrant)
        return self.head(h)


def _ref_act_grad_l2(net: Net, seed: int) -> list[float]:
    """||dL/dh|| at each block's output of ``backward(net, seed)``, by retain_grad on a float64 copy."""
    ref = copy.deepcopy(net).double()
    for module in ref.modules():  # a deep copy carries the monitor's hooks: the reference runs without them
        module._forward_hooks.clear()
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(6, 4, generator=g).double(), torch.randn(6, 1, generator=g).double()
    h, outputs = ref.inp(x), []
    for layer in ref.layers:
        h = layer(h)
        h.retain_grad()
        outputs.append(h)
    ((ref.head(h) - y) ** 2).mean().backward()
    return [torch.linalg.vector_norm(o.grad).item() for o in outputs]


def _act_run(net: Net, steps: int, **options) -> tuple[torch.Tensor, list[list[float]]]:
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    refs = []
    with GradientMonitor(net, opt, **options) as monitor:
        for step in range(steps):
            refs.append(_ref_act_grad_l2(net, step))
            backward(net, step)
            opt.step()
            opt.zero_grad()
        return monitor.history.block_act_grad_l2(), refs


def _assert_act_close(got: torch.Tensor, refs: list[list[float]], recorded: list[int]) -> None:
    for t, ref in enumerate(refs):
        for b, value in enumerate(ref):
            if t in recorded:
                assert math.isclose(float(got[t, b]), value, rel_tol=1e-5), (t, b)
            else:
                assert math.isnan(float(got[t, b])), (t, b)


def test_activation_grads_match_retain_grad_in_float64_at_every_step():
    got, refs = _act_run(make(), 3, activation_grads=True)
    _assert_act_close(got, refs, recorded=[0, 1, 2])


def test_activation_grads_every_n_steps_leave_the_other_steps_unrecorded():
    got, refs = _act_run(make(), 5, activation_grads=2)
    _assert_act_close(got, refs, recorded=[1, 3])  # steps 2 and 4


@pytest.mark.parametrize("use_reentrant", [False, True])
def test_activation_grads_under_activation_checkpointing(use_reentrant):
    torch.manual_seed(0)
    net = CheckpointedNet(use_reentrant)
    got, refs = _act_run(net, 2, activation_grads=True)
    _assert_act_close(got, refs, recorded=[0, 1])


def test_activation_grads_sum_the_micro_batches_of_a_step():
    net = make()
    ref_net = copy.deepcopy(net)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with GradientMonitor(net, opt, activation_grads=True) as monitor:
        backward(net, 0, scale=0.5)
        backward(net, 1, scale=0.5)
        opt.step()
        got = monitor.history.block_act_grad_l2()[0].tolist()
    first, second = _ref_act_grad_l2(ref_net, 0), _ref_act_grad_l2(ref_net, 1)
    for value, a, b in zip(got, first, second):  # the norm of dL/dh over both micro-batches' examples
        assert math.isclose(value, 0.5 * math.hypot(a, b), rel_tol=1e-5)


@pytest.mark.parametrize("backend, activation_grads", [("eager", 1), ("eager", 2), ("aot_eager", 2)])
def test_activation_grads_under_torch_compile(backend, activation_grads):
    """Hooks on the blocks of the compiled module's original module; dynamo keeps them (no graph break, one
    graph), aot_eager runs the backward as AOTAutograd's graph. No C++ compiler needed (inductor agrees too)."""
    net = make()
    compiled = torch.compile(net, backend=backend)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    refs = []
    with GradientMonitor(compiled, opt, activation_grads=activation_grads) as monitor:
        for step in range(4):
            refs.append(_ref_act_grad_l2(net, step))
            backward(compiled, step)
            opt.step()
            opt.zero_grad()
        got = monitor.history.block_act_grad_l2()
    _assert_act_close(got, refs, recorded=[0, 1, 2, 3] if activation_grads == 1 else [1, 3])


def test_the_report_series_and_block_table_carry_weights_updates_and_dl_dh(tmp_path):
    net = make()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    with GradientMonitor(net, opt, update_ratios=True, activation_grads=2) as monitor:
        for step in range(4):
            backward(net, step)
            opt.step()
            opt.zero_grad()
        history, report = monitor.history, monitor.report()
    rows = [r for r in report.series if r["block"] == "layers.2"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["weight_l2"] for r in rows] == history.block_weight_l2()[:, 2].tolist()
    assert [r["update_ratio"] for r in rows] == history.block_update_ratio()[:, 2].tolist()
    act = [r["act_grad_l2"] for r in rows]
    assert math.isnan(act[0]) and math.isnan(act[2]) and act[1] > 0 and act[3] > 0  # steps 2 and 4
    last = next(b for b in report.blocks if b["block"] == "layers.2")
    assert last["act_grad_l2"] == act[3] and last["update_ratio"] == rows[-1]["update_ratio"]
    head = next(p for p in report.params if p["name"] == "head.weight")
    assert close(head["weight_l2"], math.sqrt(history.weight_sumsq[-1, history.param_names.index("head.weight")]))
    report.save(tmp_path, formats=("json", "md"))
    loaded = type(report).load(tmp_path / "report.json")  # validated on the way in
    assert next(r for r in loaded.series if r["block"] is None and r["step"] == 4)["update_ratio"] == \
        history.global_update_ratio()[-1].item()


@pytest.mark.parametrize("make_opt", [
    lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9),
    lambda ps: torch.optim.AdamW(ps, lr=1e-2),
], ids=["sgd", "adamw"])
def test_update_ratios_taken_from_the_optimizer_named_in_updates_from_while_step_records(make_opt):
    """What the training callbacks do: step() records (and keeps the weights), the optimizer's own post-hook
    takes the update, finish_update() at the step's end reads the one of a step the optimizer never took."""
    net = make().double()
    opt = make_opt(net.parameters())
    refs = []
    with GradientMonitor(net, updates_from=opt, update_ratios=True, flush_every=2) as monitor:
        for step in range(5):
            g = torch.Generator().manual_seed(step)
            x, y = torch.randn(6, 4, generator=g).double(), torch.randn(6, 1, generator=g).double()
            ((net(x) - y) ** 2).mean().backward()
            before = _weights(net)
            monitor.step()
            if step != 2:  # step 3 is skipped, as a GradScaler does: the optimizer's step never runs
                opt.step()
            monitor.finish_update()  # a no-op after the optimizer's post-hook took the update
            refs.append(update_ratios(before, _weights(net), BLOCKS))
            opt.zero_grad()
        history = monitor.history
        assert len(opt._optimizer_step_post_hooks) == 1  # the monitor's, until it closes
    assert opt._optimizer_step_post_hooks == {} and opt._optimizer_step_pre_hooks == {}
    ratios = history.global_update_ratio().tolist()
    assert ratios[2] == 0.0 and history.block_update_ratio()[2].tolist() == [0.0] * len(BLOCKS)
    for t, ref in enumerate(refs):
        assert math.isclose(ratios[t], ref["global"], rel_tol=1e-9, abs_tol=1e-300), t
        for b, block in enumerate(BLOCKS):
            assert math.isclose(float(history.block_update_ratio()[t, b]), ref[block], rel_tol=1e-9), (t, block)


def test_updates_from_is_refused_beside_optimizer_and_needs_an_optimizer():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with pytest.raises(UsageError, match="pass the optimizer as `optimizer` or as `updates_from`, not both"):
        GradientMonitor(net, opt, updates_from=opt, update_ratios=True)
    with pytest.raises(UsageError, match="`optimizer` must be a torch.optim.Optimizer; got Net"):
        GradientMonitor(net, updates_from=net, update_ratios=True)
    with GradientMonitor(net, updates_from=opt) as monitor:  # no update_ratios: no hook on the optimizer
        assert opt._optimizer_step_post_hooks == {}
        backward(net, 0)
        assert monitor.step()
        opt.step()
        assert math.isnan(monitor.latest()["global_update_ratio"])


def test_the_training_callbacks_take_update_ratios_and_refuse_a_run_with_several_optimizers():
    from gradscope.integrations._options import MonitorCallbackOptions

    options = MonitorCallbackOptions(update_ratios=2)
    assert options.config.update_ratios == 2 and options.config.weight_norms
    net = make()
    opts = (torch.optim.SGD(net.parameters(), lr=0.1), torch.optim.SGD(net.parameters(), lr=0.1))
    with pytest.raises(UsageError, match="follows one optimizer; this run has 2: leave `update_ratios` out"):
        options.make_monitor(net, optimizers=opts)
    monitor = options.make_monitor(net, optimizers=opts[:1])
    assert len(opts[0]._optimizer_step_post_hooks) == 1
    monitor.close()
    assert opts[0]._optimizer_step_post_hooks == {}


def test_update_ratios_every_n_steps_leave_the_other_steps_without_a_ratio():
    net = make()
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    with GradientMonitor(net, opt, update_ratios=3) as monitor:
        for step in range(6):
            backward(net, step)
            opt.step()
            opt.zero_grad()
        ratios = monitor.history.global_update_ratio().tolist()
        weights = monitor.history.global_weight_l2().tolist()
    assert [math.isnan(r) for r in ratios] == [True, True, False, True, True, False]  # steps 3 and 6
    assert all(w > 0 for w in weights)  # weight norms at every recorded step


@pytest.mark.parametrize("checkpointing", [False, True])
def test_activation_grads_of_a_hugging_face_bert_with_and_without_gradient_checkpointing(checkpointing):
    transformers = pytest.importorskip("transformers")
    from gradscope.measure import first_tensor

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=16, hidden_dropout_prob=0.0,
                                     attention_probs_dropout_prob=0.0)
    torch.manual_seed(0)
    model = transformers.BertForMaskedLM(config).train()
    ids = torch.randint(0, 50, (2, 8), generator=torch.Generator().manual_seed(0))
    ref = copy.deepcopy(model).double()
    outputs = []

    def keep(module, args, output) -> None:
        first_tensor(output).retain_grad()
        outputs.append(first_tensor(output))

    for layer in ref.bert.encoder.layer:
        layer.register_forward_hook(keep)
    ref(input_ids=ids, labels=ids).loss.backward()
    expected = [torch.linalg.vector_norm(o.grad).item() for o in outputs]
    if checkpointing:
        (getattr(model, "activation_checkpointing_enable", None) or model.gradient_checkpointing_enable)()
    assert model.is_gradient_checkpointing == checkpointing
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with GradientMonitor(model, opt, activation_grads=True) as monitor:
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        history = monitor.history
    got = history.block_act_grad_l2()[0]
    layers = [history.blocks.index(f"bert.encoder.layer.{i}") for i in range(3)]
    for index, value in zip(layers, expected):
        assert math.isclose(float(got[index]), value, rel_tol=1e-5)


@pytest.mark.parametrize("name", ["update_ratios", "activation_grads"])
def test_every_n_options_refuse_what_is_not_a_count(name):
    with pytest.raises(UsageError, match=rf"`{name}` must be True, False or a non-negative integer \(every N "
                                         r"recorded steps\); got -1"):
        GradientMonitor(make(), torch.optim.SGD(make().parameters(), lr=0.1), **{name: -1})
