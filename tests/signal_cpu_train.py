"""``train.py`` on CPU processes where one process is sent a stop signal, for tests: ``torchrun --nproc_per_node 2
tests/signal_cpu_train.py RANK SIGNAL key=value ...``: process ``RANK`` sends itself ``SIGNAL`` (e.g. ``SIGUSR1``, a
scheduler's preemption notice) during the first step; every process must stop after the same step, with one
checkpoint."""
from __future__ import annotations

import os
import signal
import sys


def signalled(train_step, name: str, rank: int = 0):
    """``train_step`` (``fdistill.run``'s) that sends this process the signal ``name`` during the first step, on
    process ``rank`` only."""
    def signalled_step(ctx, job, step):
        if step == 0 and ctx.acc.process_index == rank:
            os.kill(os.getpid(), getattr(signal, name))
        return train_step(ctx, job, step)

    return signalled_step


def main(argv) -> int:
    import train
    import fdistill.run as run_module

    run_module.train_step = signalled(run_module.train_step, argv[1], int(argv[0]))
    return train.main(argv[2:])


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    sys.exit(main(sys.argv[1:]))
