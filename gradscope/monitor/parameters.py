"""Which parameters a monitor follows: the selection (``params``), and the parameters that join it later.

A parameter unfrozen after the monitor was made, or added to the model, joins at the next step (when ``params``
selects it); its earlier steps read as "no gradient". Noticing one costs one ``requires_grad`` read per frozen
parameter, and a walk over the model only after torch's global registration hooks saw a parameter or submodule
registered somewhere (:class:`ParameterRegistrations`), so the common step never walks the model.
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass
from typing import Optional, Sequence

import torch
from torch import nn

from ..blocks import block_of, named_parameters
from ..errors import UsageError

NamedParams = list[tuple[str, nn.Parameter]]

PARAMETERS_REPLACED = (
    "the model's parameters were replaced after the monitor was made (FSDP wrapping, parameter surgery or "
    "load_state_dict(assign=True)); close this monitor and make a new one after the change")


class ParameterRegistrations:
    """Counts parameters and submodules registered on any module of the process (torch's global hooks,
    installed with the first monitor). A monitor compares the count with the one it last saw: a model can
    only gain a parameter through such a registration."""

    count = 0
    _installed = False

    @classmethod
    def install(cls) -> None:
        if cls._installed:
            return
        torch.nn.modules.module.register_module_parameter_registration_hook(cls._seen)
        torch.nn.modules.module.register_module_module_registration_hook(cls._seen)
        cls._installed = True

    @classmethod
    def _seen(cls, *args) -> None:
        cls.count += 1


def param_matches(name: str, pattern: str) -> bool:
    """Whether a ``params`` entry (a name or an ``fnmatch`` pattern) selects the parameter ``name``."""
    return name == pattern or fnmatch.fnmatchcase(name, pattern)


def select_parameters(model: nn.Module, patterns: Optional[Sequence[str]]) -> tuple[NamedParams, list[str]]:
    """(selected trainable named parameters, names of frozen parameters left out).

    UsageError when nothing is trainable, or when a name or pattern selects no
    trainable parameter (with the close matches, or the frozen ones it matched).
    """
    named = named_parameters(model)
    trainable = [(n, p) for n, p in named if p.requires_grad]
    frozen = [n for n, p in named if not p.requires_grad]
    if not trainable:
        raise UsageError(
            "the model has no trainable parameters (all have requires_grad=False); unfreeze the ones to monitor "
            "(p.requires_grad_(True)) before making the monitor"
        )
    if patterns is None:
        return trainable, frozen
    chosen: dict[str, nn.Parameter] = {}
    for pattern in patterns:
        hits = [(n, p) for n, p in trainable if param_matches(n, pattern)]
        if not hits:
            frozen_hits = [n for n in frozen if param_matches(n, pattern)]
            if frozen_hits:
                raise UsageError(f"`params`: {pattern!r} matches only frozen parameters ({frozen_hits[0]}, ...); "
                                 "unfreeze them first or leave the pattern out")
            close = difflib.get_close_matches(pattern, [n for n, _ in trainable], n=3)
            # the names as gradscope reads them: a wrapper's prefix (DDP, PEFT, torch.compile) is not part of them
            examples = ", ".join(n for n, _ in trainable[:3]) + (", ..." if len(trainable) > 3 else "")
            hint = f"; close matches: {', '.join(close)}" if close else f"; the trainable names are {examples}"
            raise UsageError(f"`params`: {pattern!r} matches no trainable parameter{hint}")
        chosen.update(hits)
    selected = [(n, p) for n, p in trainable if n in chosen]  # model order, no duplicates
    return selected, frozen


@dataclass(frozen=True)
class Arrivals:
    """Parameters seen since the last look: unfrozen ones, trainable ones added to the model, and of those the
    ones ``params`` selects (``joining``); the others stay left out."""

    unfrozen: tuple[str, ...]
    added: tuple[str, ...]
    joining: frozenset[str]


class MonitoredParameters:
    """The parameters a monitor follows (``names`` and ``params``, in model order), the frozen ones that may
    join later, and the trainable ones ``params`` left out."""

    def __init__(self, model: nn.Module, patterns: Optional[Sequence[str]], named: NamedParams,
                 frozen: Sequence[str]):
        self.model = model
        self.patterns = patterns
        self.names = tuple(n for n, _ in named)
        self.params = [p for _, p in named]
        frozen = set(frozen)
        self._frozen = {n: p for n, p in named_parameters(model) if n in frozen}  # may be unfrozen later
        ParameterRegistrations.install()
        self._registrations = ParameterRegistrations.count  # a parameter added later joins at its next step
        self._left_out = {n for n, p in named_parameters(model) if p.requires_grad} - set(self.names)

    def __len__(self) -> int:
        return len(self.params)

    @property
    def frozen(self) -> list[str]:
        """Names of the model's frozen parameters, left out until they are unfrozen."""
        return list(self._frozen)

    def arrivals(self) -> Optional[Arrivals]:
        """The parameters unfrozen or added since the last look, or None (the common step: no walk over the
        model unless something was registered). Added frozen parameters are noted here, to be watched."""
        unfrozen = [n for n, p in self._frozen.items() if p.requires_grad]
        added: list[str] = []
        if ParameterRegistrations.count != self._registrations:
            self._registrations = ParameterRegistrations.count
            known = set(self.names) | set(self._frozen) | self._left_out
            for name, p in named_parameters(self.model):
                if name not in known:
                    if p.requires_grad:
                        added.append(name)
                    else:
                        self._frozen[name] = p
        if not unfrozen and not added:
            return None
        patterns = self.patterns
        joining = frozenset(n for n in (*unfrozen, *added)
                            if patterns is None or any(param_matches(n, pat) for pat in patterns))
        return Arrivals(tuple(unfrozen), tuple(added), joining)

    def admit(self, arrivals: Arrivals) -> Optional[list[int]]:
        """Take ``arrivals`` in. When parameters joined: for each monitored parameter (model order) its row
        before (-1 for a newcomer), to widen what was recorded with the old rows; else None."""
        for name in arrivals.unfrozen:
            del self._frozen[name]
        self._left_out |= {n for n in (*arrivals.unfrozen, *arrivals.added) if n not in arrivals.joining}
        if not arrivals.joining:
            return None
        monitored = set(self.names) | arrivals.joining
        named = [(n, p) for n, p in named_parameters(self.model) if n in monitored]  # model order
        old = {n: i for i, n in enumerate(self.names)}
        self.names = tuple(n for n, _ in named)
        self.params = [p for _, p in named]
        return [old.get(n, -1) for n, _ in named]

    def replaced(self) -> bool:
        """Whether the model no longer holds the very parameters followed (FSDP wrapping, surgery,
        ``load_state_dict(assign=True)``): their records would describe other tensors."""
        current = dict(named_parameters(self.model))
        return any(current.get(n) is not p for n, p in zip(self.names, self.params))

    def gradients_by_block(self, blocks: Sequence[str]) -> dict[str, list[torch.Tensor]]:
        """The current gradients grouped by block (``blocks``' order); parameters outside every block left out."""
        out: dict[str, list[torch.Tensor]] = {b: [] for b in blocks}
        for name, p in zip(self.names, self.params):
            block = block_of(name, blocks)
            if block is not None and p.grad is not None:
                out[block].append(p.grad)
        return out
