"""How far a served answer may be from Keras's: what the product promises for the precision that really ran.

Tests never pick a tolerance from the machine they run on; they read the execution precision kvd recorded
(the manifest's parity report) and hold the answer to the same bound the upload's parity check used.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from kvserve.server.uploads.parity import tolerance_for


def promised(manifest: Mapping[str, Any]) -> float:
    """The max rel diff kvd promises for this upload (its weights, the precision it executed in, and the compute
    dtype of the original Keras model: float16/bfloat16 for a mixed-precision one)."""
    parity = manifest["parity"]
    compute = parity.get("reference_compute_dtype") or (manifest.get("converter") or {}).get("compute_dtype") or "float32"
    return tolerance_for(manifest["precision"], parity.get("execution_precision", "unknown"), compute)


def rel_diff(served: np.ndarray, reference: np.ndarray) -> float:
    """Max abs diff over the reference's spread, as the product's parity check measures it."""
    reference = np.asarray(reference, dtype=np.float64)
    spread = float(np.ptp(reference)) or float(np.max(np.abs(reference))) or 1.0
    return float(np.max(np.abs(np.asarray(served, dtype=np.float64) - reference)) / spread)
