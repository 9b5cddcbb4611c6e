"""Training methods: each module of this package is one method, selected by ``task`` (its module name) and run by the
one training loop (``fdistill.run``). ``distill``: distribution matching (f-divergences, Uni-Instruct; MATH §2–§5);
``teacher``: denoising score matching of a teacher (MATH §4); ``regress``: the probability-flow regression ceiling
(MATH R1). A method of one's own outside the package: ``task=package.module:Class``.

A method module defines ``METHOD``, a subclass of ``Method`` below; adding one is that module, its config and its
test (``docs/architecture.md``, "Adding a method"). Found by name, imported only when chosen: nothing registers
itself on import.
"""
from __future__ import annotations

import importlib
import pkgutil

from ..optim import DISTILL_BETAS


def available() -> list[str]:
    """The method names (``task`` values) this package holds."""
    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def method_class(task: str) -> type:
    """The ``Method`` subclass ``task`` names: a module of this package (its ``METHOD``) or ``package.module:Class``."""
    if ":" in task:
        module_name, _, attr = task.partition(":")
        cls = getattr(importlib.import_module(module_name), attr, None)
        if cls is None:
            raise ValueError(f"task={task!r}: module {module_name!r} has no attribute {attr!r}")
    else:
        if task not in available():
            raise ValueError(f"task={task!r} is not a method; valid: {available()} or package.module:Class")
        cls = importlib.import_module(f"{__name__}.{task}").METHOD
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise ValueError(f"task={task!r} names {cls!r}, not a subclass of fdistill.methods.Method")
    return cls


class Method:
    """What the loop drives. ``__init__(cfg, ctx)`` builds the networks and registers each optimiser with
    ``ctx.prepare(name, model, optimizer, base_lr)`` (the loop then owns its learning-rate schedule and warm-up);
    every update goes through ``ctx.update(name, loss, model, optimizer)`` (NaN steps skipped and counted).

    ``options``: a dataclass of the method's own options, set as ``method.<name>`` in a config (``None``: it takes
    none); the config loader refuses any other ``method.*`` key and fills the defaults. ``phases``: the names of the public methods one step is made of, each runnable on its own (benchmarks time
    them); ``step(i)`` composes them and returns the step's stats (tensors, no host sync). A method with an ``ema``
    (``fdistill.ema.EMA``) gets it updated from ``ema_source`` after each step. ``default_betas``: Adam's betas when
    ``train.betas`` is null. ``progress_keys``: the stats shown on the progress bar."""
    options: type | None = None
    phases: tuple[str, ...] = ()
    progress_keys: tuple[str, ...] = ()
    default_betas: tuple[float, float] = DISTILL_BETAS
    ema = None

    @property
    def ema_source(self):
        """The trained module the EMA follows."""
        raise NotImplementedError

    def step(self, step: int) -> dict:
        """One training step: a method of one phase runs it; one of several phases composes them itself."""
        if len(self.phases) != 1:
            raise NotImplementedError(f"{type(self).__name__} has phases {self.phases}: it must define step()")
        return getattr(self, self.phases[0])(step)

    def state_dict(self) -> dict:
        """What a checkpoint holds beyond the prepared models and optimisers (plain tensors, numbers, strings)."""
        return {} if self.ema is None else {"ema": self.ema.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])

    def snapshot(self, step: int) -> str | None:
        """Pictures of the model at ``step`` (``train.sample_every``; main process only)."""
        return None

    def export(self) -> dict:
        """The run's outputs after the last step (called on every process); returns its final metrics."""
        return {}
