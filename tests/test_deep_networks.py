"""A network of tens of thousands of layers runs to the end: its autograd graph is freed one layer at a time
(probe.Recorder.release_graph), not in one recursive call that overflows the C stack.

The default stack (8 MiB) overflowed at about 40,000 layers. A subprocess with a 1 MiB stack shows the same
overflow at 6,000, so the tests run 8,000 layers of width 2 there (seconds, not minutes): with the graph freed
from the top in one go it dies of SIGSEGV, with release_graph it finishes."""

import json
import os
import resource
import subprocess
import sys

import pytest

STACK = 1 << 20
DEPTH = 8000

SCRIPT = """
import json, sys
from pathlib import Path
from initprobe import config, runner
cfg = config.RunConfig(**json.loads(sys.argv[1]))
result = runner.run(cfg, root=Path(sys.argv[2]))
print(json.dumps({"rows": len(result.layers), "checkpoint": result.summary["checkpoint"]["used"]}))
"""


def small_stack():
    resource.setrlimit(resource.RLIMIT_STACK, (STACK, STACK))


@pytest.mark.slow
@pytest.mark.parametrize("act, checkpoint", [("tanh", False), ("tanh", True), ("softsign", False)])
def test_a_deep_network_finishes_with_a_small_stack(tmp_path, act, checkpoint):
    """tanh hooks phi's node; softsign (a composite) hooks h and x: both kinds of graph are freed layer by layer,
    in the plain and the checkpointed probe."""
    cfg = dict(depth=DEPTH, width=2, batch=2, seeds=1, plots=False, act=act, checkpoint=checkpoint, device="cpu")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, json.dumps(cfg), str(tmp_path)], capture_output=True,
                          text=True, preexec_fn=small_stack, env=env, timeout=600)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    assert json.loads(proc.stdout.splitlines()[-1]) == {"rows": DEPTH, "checkpoint": checkpoint}
