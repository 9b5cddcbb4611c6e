"""``train.py`` under accelerate FSDP2 on CPU processes (gloo), for tests: ``torchrun --nproc_per_node 2
tests/fsdp_cpu_train.py key=value ...`` (the same overrides as train.py; ``--min-params N`` sets the size-based wrap).

accelerate 1.15 never selects FSDP on CPU: ``AcceleratorState`` switches to ``DistributedType.FSDP`` only for GPU-like
distributed types, so ``ACCELERATE_USE_FSDP=true`` or ``Accelerator(fsdp_plugin=...)`` with ``ACCELERATE_USE_CPU=1``
silently runs DDP (MULTI_CPU) and drops the plugin. This script makes the accelerator as train.py does and then sets
the distributed type and the FSDP2 plugin in accelerate's shared state, so that ``prepare``, ``clip_grad_norm_``,
``save_state`` and ``load_state`` take their FSDP2 paths (torch's ``fully_shard`` itself runs on CPU with gloo).
"""
from __future__ import annotations

import sys


def force_fsdp2(min_num_params: int = 1000):
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, state_dict_type="SHARDED_STATE_DICT",
                                            auto_wrap_policy="size_based_wrap", min_num_params=min_num_params,
                                            reshard_after_forward=True)
    # both shared states: AcceleratorState() re-reads PartialState's distributed_type whenever it is constructed
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["distributed_type"] = DistributedType.FSDP
    AcceleratorState._shared_state["fsdp_plugin"] = plugin


def main(argv) -> int:
    from fdistill.config import load_config
    from fdistill.run import make_accelerator, run
    from fdistill.methods.distill import Distiller

    min_params = 1000
    if argv[:1] == ["--min-params"]:
        min_params, argv = int(argv[1]), argv[2:]
    cfg = load_config(None, argv)
    acc = make_accelerator(cfg)
    force_fsdp2(min_params)
    assert acc.is_fsdp2 and acc.num_processes > 1, (acc.distributed_type, acc.num_processes)
    from eval.gmm import gmm_metrics

    print(run(cfg, Distiller, accelerator=acc, measures=gmm_metrics))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
