"""A real multi-process grid: two local processes joined by ``jax.distributed`` give the rows of one process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("distributed_worker.py")
TIMEOUT_S = 180


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(n_processes: int, out: Path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XLA_", "JAX_"))}
    env["JAX_PLATFORMS"] = "cpu"
    port = _free_port()
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(i), str(n_processes), str(port), str(out)],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(n_processes)]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT_S)[0])
    finally:
        for p in procs:  # a hung peer (coordinator never reached) must not outlive the test
            if p.poll() is None:
                p.kill()
    for i, p in enumerate(procs):
        assert p.returncode == 0, f"process {i} of {n_processes} failed:\n{logs[i][-3000:]}"
    return [json.loads(Path(f"{out}.{i}.json").read_text()) for i in range(n_processes)]


@pytest.mark.slow
def test_two_processes_shard_one_grid_and_match_a_single_process_run(tmp_path):
    single, = _run(1, tmp_path / "single")
    both = _run(2, tmp_path / "multi")
    assert [r["process"] for r in both] == [0, 1]
    for record in both:
        # the mesh really spans both processes and the outputs came back spread over both devices
        assert record["devices"] == 2
        assert record["info"]["n_devices"] == 2 and record["info"]["output_devices"] == 2
        assert record["info"]["cells_total"] == single["info"]["cells_total"] == 18
        # every process gets the whole grid, cell for cell equal to the single-process run (same programs per cell)
        assert record["rows"] == single["rows"]
        assert record["loss"] == single["loss"]
    assert single["info"]["n_devices"] == 1
