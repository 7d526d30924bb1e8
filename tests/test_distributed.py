"""Two processes, gloo, CPU: FSDP2-, FSDP1- and DDP-trained statistics equal the single-process model's.

One spawn runs every case (process start-up dominates the time); each rank saves
what its monitor recorded and the assertions run here, against float64 norms of
a single-process model trained on the whole batch: its gradients, and, over a few
optimizer steps, its weights before each step, their update (saved copies) and
dL/dh at each block's output (``retain_grad``).
"""

from __future__ import annotations

import contextlib
import datetime
import math
import os
import socket

import pytest
import torch
from torch import nn

from stats_reference import retain_output_grads

WORLD = 2
HYBRID_WORLD = 4
BLOCKS = ["blocks.0", "blocks.1", "blocks.2"]


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(4, 6)  # 6 rows: shards of 3 and 3
        self.blocks = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 7), nn.Linear(7, 5))  # uneven shards of 5 and 7
        self.head = nn.Linear(5, 1)

    def forward(self, x):
        return self.head(torch.tanh(self.blocks(self.inp(x))))


def batch():
    g = torch.Generator().manual_seed(0)
    return torch.randn(8, 4, generator=g), torch.randn(8, 1, generator=g)


def loss_of(net, x, y):
    return ((net(x) - y) ** 2).mean()


# The opt-in records over a few steps, with an optimizer whose update is a plain multiple of the gradient and
# one whose update is not (AdamW: normalized, with decoupled weight decay).
STEPS = 3
OPTIMIZERS = {
    "sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
    "adamw": lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
}


def _train(net, opt_name: str, x, y) -> dict:
    """``STEPS`` optimizer steps of ``net`` on ``(x, y)`` under a monitor recording weight norms, update ratios
    and dL/dh at every step: what it recorded, and how many collectives its one flush made."""
    from unittest import mock

    import torch.distributed as dist

    from gradscope.monitor import GradientMonitor

    opt = OPTIMIZERS[opt_name](net.parameters())
    monitor = GradientMonitor(net, opt, update_ratios=True, activation_grads=True)  # implies weight_norms
    for _ in range(STEPS):
        loss_of(net, x, y).backward()
        opt.step()
        opt.zero_grad()
    names = [n for n in ("all_gather_single", "all_gather_into_tensor", "all_gather", "all_reduce", "broadcast")
             if hasattr(dist, n)]
    with contextlib.ExitStack() as stack:
        calls = [stack.enter_context(mock.patch.object(dist, n, wraps=getattr(dist, n))) for n in names]
        history = monitor.history  # the flush: a collective, on every rank
    monitor.close()
    return {"mode": monitor.mode, "collectives": sum(c.call_count for c in calls), **_recorded(history),
            "raw_names": [n for n, _ in net.named_parameters()], "local_numel": [p.numel() for p in net.parameters()]}


def _recorded(history) -> dict:
    return {"names": history.param_names, "param_l2": history.param_l2(), "block_l2": history.block_l2(),
            "global": history.global_l2(), "table": history.table, "numel": history.numel, "blocks": history.blocks,
            "weight_l2": history.block_weight_l2(), "global_weight_l2": history.global_weight_l2(),
            "update_ratio": history.block_update_ratio(), "global_update_ratio": history.global_update_ratio(),
            "act_grad_l2": history.block_act_grad_l2()}


@contextlib.contextmanager
def _process_group(rank: int, port: int, world: int):
    """This process as rank ``rank`` of a gloo group; every rank is done with every collective before any
    tears down. The worker then leaves with ``os._exit(0)``: everything is saved, and gloo's worker threads
    can still abort a finished process at interpreter finalization ("terminate called without an active
    exception", SIGABRT) and fail the test after its work was done."""
    import torch.distributed as dist

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    # a short timeout: a collective one rank skips fails the test instead of hanging it
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=60))
    try:
        yield
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _worker(rank: int, port: int, out: str) -> None:
    with _process_group(rank, port, WORLD):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard
        from torch.nn.parallel import DistributedDataParallel

        from gradscope.errors import UsageError
        from gradscope.monitor import GradientMonitor

        x, y = batch()
        local = slice(rank * 4, rank * 4 + 4)

        mesh = init_device_mesh("cpu", (WORLD,))
        for opt_name in OPTIMIZERS:
            torch.manual_seed(0)
            net = Net()
            for block in net.blocks:
                fully_shard(block, mesh=mesh)
            fully_shard(net, mesh=mesh)
            # each rank its half of the batch; FSDP averages the ranks' gradients
            torch.save(_train(net, opt_name, x[local], y[local]), f"{out}/fsdp2_{opt_name}_{rank}.pt")

        # FSDP1 with the original parameters: flat shard views of each gradient, and wrappers inside the names
        # ("_fsdp_wrapped_module.", "_checkpoint_wrapped_module.") that the monitor leaves out.
        from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import apply_activation_checkpointing
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        def fsdp1_net(strategy: str) -> nn.Module:
            torch.manual_seed(0)
            net = Net()
            apply_activation_checkpointing(net, check_fn=lambda m: m is net.blocks[1])
            return FullyShardedDataParallel(net, auto_wrap_policy=ModuleWrapPolicy({nn.Linear}), use_orig_params=True,
                                            device_id=torch.device("cpu"), sharding_strategy=ShardingStrategy[strategy])

        for opt_name in OPTIMIZERS:
            recorded = _train(fsdp1_net("FULL_SHARD"), opt_name, x[local], y[local])
            torch.save(recorded, f"{out}/fsdp1_{opt_name}_{rank}.pt")
        fsdp1 = fsdp1_net("NO_SHARD")
        monitor = GradientMonitor(fsdp1)
        loss_of(fsdp1, x[local], y[local]).backward()
        monitor.step()
        result = {"mode": monitor.mode}
        if rank == 0:  # replicated: rank 0 computes
            history = monitor.history
            result.update(names=history.param_names, param_l2=history.param_l2(), block_l2=history.block_l2(),
                          table=history.table, numel=history.numel, blocks=history.blocks)
        monitor.close()
        torch.save(result, f"{out}/fsdp1_no_shard_{rank}.pt")
        try:
            GradientMonitor(FullyShardedDataParallel(Net(), use_orig_params=False, device_id=torch.device("cpu")))
        except UsageError as exc:
            torch.save(str(exc), f"{out}/flat_{rank}.pt")

        torch.manual_seed(0)
        ddp = DistributedDataParallel(Net())
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        monitor = GradientMonitor(ddp)  # named as the wrapped model: no "module." prefix
        loss_of(ddp, x[local], y[local]).backward()
        monitor.clip_grad_norm_(0.01)  # records on rank 0; clips alike on every rank
        opt.step()
        result = {"mode": monitor.mode, "names": monitor.param_names,
                  "recorded": monitor.recorded_steps > 0,
                  "params": torch.cat([p.detach().reshape(-1) for p in ddp.parameters()])}
        try:
            history = monitor.history
            result["global"], result["post_clip"] = history.global_l2(), history.post_clip_l2
        except UsageError as exc:
            result["error"] = str(exc)
        monitor.close()
        torch.save(result, f"{out}/ddp_{rank}.pt")

        # Replicate placement (HSDP's replica dimension, tensor-parallel replicated weights): counted once.
        from torch.distributed.tensor import Replicate, distribute_tensor

        torch.manual_seed(0)
        layer = nn.Linear(3, 2)
        grad = torch.arange(6.0).reshape(2, 3)
        layer.weight = nn.Parameter(distribute_tensor(layer.weight.detach(), mesh, [Replicate()]))
        layer.weight.grad = distribute_tensor(grad, mesh, [Replicate()])
        monitor = GradientMonitor(layer, params=["weight"])
        monitor.step()
        torch.save({"mode": monitor.mode, "l2": monitor.history.param_l2()[0, 0].item(),
                    "numel": monitor.history.numel[0, 0].item()}, f"{out}/replicate_{rank}.pt")
        monitor.close()
    os._exit(0)


def _hybrid_worker(rank: int, port: int, out: str) -> None:
    """Four ranks, two replicas of a model sharded over two: each shard is counted once; dL/dh is over the four
    ranks' quarters of the batch."""
    with _process_group(rank, port, HYBRID_WORLD):
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import FullyShardedDataParallel, ShardingStrategy, fully_shard
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        x, y = batch()
        local = slice(rank * 2, rank * 2 + 2)
        mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("replicate", "shard"))
        torch.manual_seed(0)
        fsdp1 = FullyShardedDataParallel(Net(), auto_wrap_policy=ModuleWrapPolicy({nn.Linear}), use_orig_params=True,
                                         device_id=torch.device("cpu"), device_mesh=mesh,
                                         sharding_strategy=ShardingStrategy.HYBRID_SHARD)
        torch.manual_seed(0)
        hsdp = Net()
        for block in hsdp.blocks:
            fully_shard(block, mesh=mesh)
        fully_shard(hsdp, mesh=mesh)
        for kind, net in (("fsdp1_hybrid", fsdp1), ("fsdp2_hybrid", hsdp)):
            torch.save(_train(net, "sgd", x[local], y[local]), f"{out}/{kind}_{rank}.pt")
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, nprocs: int, out) -> None:
    if not torch.distributed.is_available():
        pytest.skip("torch.distributed is not available in this build")
    try:
        torch.multiprocessing.spawn(worker, args=(_free_port(), str(out)), nprocs=nprocs, join=True)
    except torch.multiprocessing.ProcessRaisedException as exc:
        # The free port can be taken between _free_port() and the rendezvous: one retry on another port.
        if "address" not in str(exc).lower() and "connect" not in str(exc).lower():
            raise
        torch.multiprocessing.spawn(worker, args=(_free_port(), str(out)), nprocs=nprocs, join=True)


def _load(out, kinds, world: int) -> dict:
    return {kind: [torch.load(out / f"{kind}_{r}.pt", weights_only=False) for r in range(world)] for kind in kinds}


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    _spawn(_worker, WORLD, out)
    return _load(out, ("fsdp2_sgd", "fsdp2_adamw", "fsdp1_sgd", "fsdp1_adamw", "fsdp1_no_shard", "flat", "ddp",
                       "replicate"), WORLD)


@pytest.fixture(scope="module")
def hybrid_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("hybrid")
    _spawn(_hybrid_worker, HYBRID_WORLD, out)
    return _load(out, ("fsdp1_hybrid", "fsdp2_hybrid"), HYBRID_WORLD)


@pytest.fixture(scope="module")
def reference():
    torch.manual_seed(0)
    net = Net()
    x, y = batch()
    loss_of(net, x, y).backward()
    grads = {n: p.grad.double() for n, p in net.named_parameters()}
    norm = lambda gs: torch.linalg.vector_norm(torch.cat([g.reshape(-1) for g in gs])).item()  # noqa: E731
    return {
        "param_l2": {n: g.norm().item() for n, g in grads.items()},
        "maxabs": {n: g.abs().max().item() for n, g in grads.items()},
        "numel": {n: g.numel() for n, g in grads.items()},
        "block_l2": {b: norm([g for n, g in grads.items() if n.startswith(b + ".")]) for b in BLOCKS},
        "global": norm(list(grads.values())),
    }


@pytest.fixture(scope="module")
def trained():
    """For each optimizer, ``STEPS`` steps of the plain model on the whole batch, and float64 norms at each
    step: the weights before it and the update of the step (copies saved around ``opt.step()``), and dL/dh
    of the mean loss over the whole batch at each block's output (``retain_grad``)."""
    x, y = batch()
    out = {}
    for opt_name, make in OPTIMIZERS.items():
        torch.manual_seed(0)
        net = Net()
        opt = make(net.parameters())
        outputs = retain_output_grads(net, BLOCKS)
        rows = {"weight_l2": [], "update_ratio": [], "global_weight_l2": [], "global_update_ratio": [],
                "act_grad_l2": []}
        for _ in range(STEPS):
            loss_of(net, x, y).backward()
            before = {n: p.detach().double() for n, p in net.named_parameters()}  # a float64 copy
            opt.step()
            update = {n: p.detach().double() - before[n] for n, p in net.named_parameters()}
            opt.zero_grad()

            def l2(tensors, prefix=""):
                return math.sqrt(sum(t.square().sum().item() for n, t in tensors.items() if n.startswith(prefix)))

            rows["weight_l2"].append([l2(before, b + ".") for b in BLOCKS])
            rows["update_ratio"].append([l2(update, b + ".") / l2(before, b + ".") for b in BLOCKS])
            rows["global_weight_l2"].append(l2(before))
            rows["global_update_ratio"].append(l2(update) / l2(before))
            rows["act_grad_l2"].append([outputs[b].grad.double().norm().item() for b in BLOCKS])
        out[opt_name] = {key: torch.tensor(value, dtype=torch.float64) for key, value in rows.items()}
    return out


# Gradients reduced across ranks differ from single-process ones by fp32 rounding (~1e-7 relative).
RTOL = 1e-5


def _assert_unsharded(got, reference):
    assert list(got["names"]) == list(reference["numel"])  # the plain model's names
    assert list(got["blocks"]) == BLOCKS
    for i, name in enumerate(got["names"]):
        assert math.isclose(got["param_l2"][0, i].item(), reference["param_l2"][name], rel_tol=RTOL), name
        assert math.isclose(got["table"][0, i, 3].item(), reference["maxabs"][name], rel_tol=RTOL), name
        assert got["numel"][0, i].item() == reference["numel"][name]
    for b, block in enumerate(got["blocks"]):
        assert math.isclose(got["block_l2"][0, b].item(), reference["block_l2"][block], rel_tol=RTOL)


@pytest.mark.slow
def test_fsdp2_statistics_equal_the_unsharded_model(ranks, reference):
    for got in ranks["fsdp2_sgd"]:
        assert got["mode"] == "sharded"
        _assert_unsharded(got, reference)
        assert math.isclose(got["global"][0].item(), reference["global"], rel_tol=RTOL)
    # every rank holds the same combined numbers
    torch.testing.assert_close(ranks["fsdp2_sgd"][0]["table"], ranks["fsdp2_sgd"][1]["table"], rtol=0, atol=0)


@pytest.mark.slow
def test_fsdp1_shards_combine_to_the_unsharded_model(ranks, reference):
    for got in ranks["fsdp1_sgd"]:
        assert got["mode"] == "sharded"
        assert any("_fsdp_wrapped_module" in n and "_checkpoint_wrapped_module" in n for n in got["raw_names"])
        assert sum(got["local_numel"]) < sum(reference["numel"].values())  # each rank holds a part of the model
        _assert_unsharded(got, reference)
    torch.testing.assert_close(ranks["fsdp1_sgd"][0]["table"], ranks["fsdp1_sgd"][1]["table"], rtol=0, atol=0)


SHARDED_RUNS = [("fsdp2", "sgd"), ("fsdp2", "adamw"), ("fsdp1", "sgd"), ("fsdp1", "adamw")]


def _assert_series(got, expected, key: str, rtol: float):
    assert got[key].shape == expected[key].shape, key
    torch.testing.assert_close(got[key], expected[key], rtol=rtol, atol=0, msg=key)


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "opt_name"), SHARDED_RUNS)
def test_weight_norms_under_fsdp_are_the_unsharded_models(ranks, trained, layout, opt_name):
    # weights trained by the ranks differ from the single process's by fp32 rounding of their gradients
    for got in ranks[f"{layout}_{opt_name}"]:
        assert list(got["blocks"]) == BLOCKS
        for key in ("weight_l2", "global_weight_l2"):
            _assert_series(got, trained[opt_name], key, RTOL)


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "opt_name"), SHARDED_RUNS)
def test_update_ratios_under_fsdp_are_the_unsharded_models(ranks, trained, layout, opt_name):
    # an update is the difference of two close fp32 weights, so the ranks' rounding shows in it magnified by
    # |W| / |W_after - W_before| (measured: 2.4e-7 at most, against 5e-9 for the weights): still within RTOL
    for got in ranks[f"{layout}_{opt_name}"]:
        for key in ("update_ratio", "global_update_ratio"):
            _assert_series(got, trained[opt_name], key, RTOL)


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "opt_name"), SHARDED_RUNS)
def test_dl_dh_under_fsdp_is_that_of_the_mean_loss_over_the_global_batch(ranks, trained, layout, opt_name):
    # each rank sees dL_r/dh of its own half of the batch; the record is dL/dh of the mean loss over all of it
    # (FSDP1's blocks.1 runs under activation checkpointing)
    for got in ranks[f"{layout}_{opt_name}"]:
        _assert_series(got, trained[opt_name], "act_grad_l2", RTOL)


@pytest.mark.slow
@pytest.mark.parametrize(("layout", "opt_name"), SHARDED_RUNS)
def test_the_opt_in_records_travel_in_the_one_collective_of_the_flush(ranks, layout, opt_name):
    zero, one = ranks[f"{layout}_{opt_name}"]
    assert zero["collectives"] == one["collectives"] == 1  # STEPS steps, every record, one flush
    for key in ("weight_l2", "update_ratio", "act_grad_l2"):  # every rank holds the same combined numbers
        torch.testing.assert_close(zero[key], one[key], rtol=0, atol=0, msg=key)


@pytest.mark.slow
def test_fsdp1_without_sharding_is_replicated(ranks, reference):
    zero, one = ranks["fsdp1_no_shard"]
    assert zero["mode"] == one["mode"] == "replicated"
    _assert_unsharded(zero, reference)
    assert "names" not in one  # rank 1 records nothing


@pytest.mark.slow
def test_fsdp1_flat_parameters_are_refused_with_the_fix(ranks):
    for message in ranks["flat"]:
        assert "use_orig_params=True" in message and "fully_shard" in message


@pytest.mark.slow
def test_ddp_computes_on_rank_zero_only_and_clips_alike(ranks, reference):
    zero, one = ranks["ddp"]
    assert zero["mode"] == one["mode"] == "replicated"
    assert list(zero["names"]) == list(one["names"]) == list(reference["numel"])
    assert zero["recorded"] is True and one["recorded"] is False
    assert math.isclose(zero["global"][0].item(), reference["global"], rel_tol=RTOL)
    assert math.isclose(zero["post_clip"][0].item(), 0.01, rel_tol=1e-4)
    assert "rank 0" in one["error"]
    assert torch.equal(zero["params"], one["params"])  # the replicas stay identical after clipping


@pytest.mark.slow
def test_replicated_dtensor_is_counted_once(ranks):
    for got in ranks["replicate"]:
        assert got["mode"] == "sharded"
        assert got["numel"] == 6
        assert math.isclose(got["l2"], math.sqrt(sum(v * v for v in range(6))), rel_tol=1e-12)  # not doubled


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["fsdp1_hybrid", "fsdp2_hybrid"])
def test_hybrid_sharding_counts_each_shard_once(hybrid_ranks, reference, trained, kind):
    for got in hybrid_ranks[kind]:
        assert got["mode"] == "sharded"
        _assert_unsharded(got, reference)  # numel and norms not doubled by the second replica
        # nor the weights and updates; dL/dh over four ranks' quarters of the batch
        for key in ("weight_l2", "global_weight_l2", "update_ratio", "global_update_ratio", "act_grad_l2"):
            _assert_series(got, trained["sgd"], key, RTOL)
