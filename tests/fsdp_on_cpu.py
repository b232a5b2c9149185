"""Run a script under an FSDP launch on CPU processes (gloo), where Accelerate itself sets FSDP up only across GPUs.

    accelerate launch --config_file FSDP_CONFIG tests/fsdp_on_cpu.py recipes/sentiment.py ARGS...

After Accelerate has built its state (DDP over gloo, MULTI_CPU), the launch's FSDP plugin goes in and the type
becomes FSDP, as on GPUs: the sharding (fully_shard), its gathers and the state-dict calls are then torch's and
Accelerate's own, on CPU tensors. For the tests alone: no GPU machine is at hand to run FSDP on.
"""

import os
import runpy
import sys

from accelerate.state import AcceleratorState, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

accelerator_state = AcceleratorState.__init__


def fsdp_on_cpu(self, *args, fsdp_plugin=None, **kwargs):
    # Accelerate calls AcceleratorState() again and again once it is set up: each call must keep the plugin (and
    # what a run has told it, such as the layer classes to wrap), as Accelerate itself does, not read a fresh one.
    kept = AcceleratorState._shared_state.get("fsdp_plugin")  # the one state every instance shares
    accelerator_state(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
    # MULTI_CPU at the first run of a process; FSDP at the next ones (a compare grid's cells), read from PartialState.
    if os.environ.get("ACCELERATE_USE_FSDP") == "true" and self.distributed_type in (DistributedType.MULTI_CPU,
                                                                                      DistributedType.FSDP):
        self.fsdp_plugin = fsdp_plugin or kept or FullyShardedDataParallelPlugin()  # from the launch's FSDP_* variables
        # Accelerate reads the type from both states (its FSDP helpers ask PartialState).
        self.distributed_type = PartialState().distributed_type = DistributedType.FSDP


AcceleratorState.__init__ = fsdp_on_cpu
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
