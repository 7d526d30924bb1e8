"""An fp64 NumPy reference for grad_stats, independent of gradscope's own code."""

from __future__ import annotations

import numpy as np
import torch

FIELDS = ("sumsq", "sum", "sumabs", "maxabs", "nonfinite", "zeros", "numel")


def expected_stats(t) -> dict:
    """Statistics of one tensor (or None) computed in float64 with NumPy."""
    if t is None:
        return dict(sumsq=0.0, sum=0.0, sumabs=0.0, maxabs=0.0, nonfinite=0, zeros=0, numel=0)
    dense = t.detach().to_dense() if t.layout == torch.sparse_coo else t.detach()
    x = dense.to(device="cpu", dtype=torch.float64).numpy().ravel()
    finite = np.isfinite(x)
    xf = np.where(finite, x, 0.0)
    return dict(
        sumsq=float(np.sum(xf * xf)),
        sum=float(np.sum(xf)),
        sumabs=float(np.sum(np.abs(xf))),
        maxabs=float(np.max(np.abs(xf), initial=0.0)),
        nonfinite=int((~finite).sum()),
        zeros=int((x == 0).sum()),
        numel=int(x.size),
    )


def constant_cases(device) -> list[torch.Tensor]:
    """Long constant tensors: every fp32 partial sum rounds the same way, so rounding errors add up
    instead of cancelling. A kernel that sums too many terms in fp32 before widening drifts past 1e-6."""
    out = []
    for dtype, value, sizes in ((torch.bfloat16, 0.99609375, (131_072, 3 * 131_072 + 5)),
                                (torch.float16, 0.3, (131_072,)),
                                (torch.float32, 0.1, (65_536, 1 << 20)),
                                (torch.float32, 0.3, (65_536,)),
                                (torch.float32, -0.7, (1 << 20,))):
        out += [torch.full((n,), value, dtype=dtype, device=device) for n in sizes]
    return out


def assert_stats_match(stats, tensors, rtol: float = 1e-6) -> None:
    """Every row of ``stats`` against the reference: counts and max exact, sums within rtol.

    sumsq and sumabs are sums of non-negative terms: relative tolerance. sum can
    cancel to near zero, so its error is bounded by rtol times the sum of |x|.
    """
    host = stats.cpu()
    assert len(host) == len(tensors)
    for i, t in enumerate(tensors):
        want = expected_stats(t)
        got = {name: getattr(host, name)[i].item() for name in FIELDS}
        where = f"row {i} ({None if t is None else (t.dtype, tuple(t.shape))})"
        for name in ("nonfinite", "zeros", "numel"):
            assert got[name] == want[name], f"{where}: {name} {got[name]} != {want[name]}"
        assert got["maxabs"] == want["maxabs"], f"{where}: maxabs {got['maxabs']} != {want['maxabs']}"
        for name in ("sumsq", "sumabs"):
            assert abs(got[name] - want[name]) <= rtol * abs(want[name]), f"{where}: {name} {got[name]} vs {want[name]}"
        assert abs(got["sum"] - want["sum"]) <= rtol * want["sumabs"], f"{where}: sum {got['sum']} vs {want['sum']}"
        assert bool(host.present[i]) == (t is not None)


def update_ratios(before: dict, after: dict, blocks) -> dict:
    """||W_after - W_before|| / ||W_before|| in float64 from copies of the named weights around an optimizer
    step: over all of them (``"global"``) and over each block's (the names under ``block.``)."""

    def ratio(names) -> float:
        diff = torch.cat([(after[n].double() - before[n].double()).reshape(-1) for n in names])
        kept = torch.cat([before[n].double().reshape(-1) for n in names])
        return (torch.linalg.vector_norm(diff) / torch.linalg.vector_norm(kept)).item()

    out = {"global": ratio(list(before))}
    out.update({b: ratio([n for n in before if n.startswith(b + ".")]) for b in blocks})
    return out


def retain_output_grads(model, names) -> dict:
    """Keep each named submodule's output (its first tensor) at every forward, with ``retain_grad``: after the
    backward pass ``outputs[name].grad`` is dL/dh at that output, from plain autograd. Returns ``outputs``,
    filled as the forward passes run."""
    outputs = {}

    def keep(name):
        def hook(module, args, output):
            output = output[0] if isinstance(output, tuple) else output
            output.retain_grad()
            outputs[name] = output

        return hook

    for name in names:
        model.get_submodule(name).register_forward_hook(keep(name))
    return outputs
