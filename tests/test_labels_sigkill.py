"""Every change the store confirmed survives a SIGKILL of the writing process."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scanqc.io.labels import REASONS, LabelStore

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="needs SIGKILL")

ITERATIONS = int(os.environ.get("SCANQC_SIGKILL_ITERATIONS", "10"))

CHILD = r"""
import sys
from scanqc.io.labels import LabelStore, REASONS
store = LabelStore.open(sys.argv[1])
start = int(sys.argv[2])
i = start
while True:
    sid = f"s{i % 50}"
    store.set(sid, label="bad", reason=REASONS[i % len(REASONS)], note=f"n{i}")
    sys.stdout.write(f"{sid} {i}\n")
    sys.stdout.flush()
    i += 1
"""


def test_confirmed_changes_survive_sigkill(tmp_path: Path) -> None:
    db = tmp_path / "labels.sqlite"
    LabelStore.open(db).close()
    rnd = random.Random(1234)
    confirmed: dict[str, int] = {}
    counter = 0
    for _ in range(ITERATIONS):
        proc = subprocess.Popen([sys.executable, "-c", CHILD, str(db), str(counter)],
                                stdout=subprocess.PIPE, text=True, bufsize=1)
        # wait until it writes at least once, then kill it at a random moment
        first = proc.stdout.readline()
        assert first, "child wrote nothing"
        time.sleep(rnd.uniform(0.0, 0.05))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        for line in [first, *proc.stdout.read().splitlines()]:
            if line.strip():
                sid, i = line.split()
                confirmed[sid] = max(confirmed.get(sid, -1), int(i))
                counter = max(counter, int(i) + 1)
        proc.stdout.close()
        with LabelStore.open(db) as store:
            stored = store.as_dict()
            for sid, i in confirmed.items():
                rec = stored[sid]
                # the stored change is the confirmed one or a later one (written but killed
                # before it was reported)
                assert int(rec.note[1:]) >= i, (sid, rec.note, i)
                n = int(rec.note[1:])
                assert rec.reason == REASONS[n % len(REASONS)]
                counter = max(counter, n + 1)
    assert len(confirmed) >= 1
