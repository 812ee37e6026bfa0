"""Two requests arriving together on a freshly loaded model must not deadlock in OpenVINO's Python bindings
(pybind11 sets up its numpy API once; two threads racing for that first use hang forever). The runner's
Core does that set-up at load time; this races four threads on a fresh process, which hangs without it."""

from __future__ import annotations

import subprocess
import sys

RACE = """
import sys, threading
import numpy as np
from kvserve.plugins.backends.openvino_devices import core

compiled = core().compile_model(sys.argv[1], "CPU", {"PERFORMANCE_HINT": "THROUGHPUT"})
requests = [compiled.create_infer_request() for _ in range(4)]
barrier = threading.Barrier(4)

def first_infer(request):
    barrier.wait()
    request.infer({"image": np.zeros((1, 8, 8, 1), np.float32)}, share_inputs=True)

threads = [threading.Thread(target=first_infer, args=(r,), daemon=True) for r in requests]
for t in threads:
    t.start()
for t in threads:
    t.join(30)
print("hung" if any(t.is_alive() for t in threads) else "ok", flush=True)
"""


def test_first_requests_in_parallel_do_not_deadlock(served_digits):
    xml = served_digits.repository / "digits" / "1" / "model.xml"
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", RACE, str(xml)], capture_output=True, text=True, timeout=120)
        assert result.stdout.strip() == "ok", result.stdout + result.stderr[-2000:]
