"""``make cluster-demo``: one writer and two read-only kvd replicas on one repository, on loopback.

Trains the digits CNN, uploads it through the writer, shows every replica serving it within the poll interval,
then sends traffic through one gRPC channel (round_robin, retry on UNAVAILABLE) while one replica is kill -9'ed
and restarted, and deletes the model. Prints the figures docs/scale-out.md quotes.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

import cluster as harness  # noqa: E402
import digits  # noqa: E402
from kvserve.client import Client  # noqa: E402


def rss_mib(replica: harness.Replica) -> float:
    """Resident memory of one kvd process (Linux /proc), in MiB."""
    for line in Path(f"/proc/{replica.process.pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--poll-seconds", type=float, default=2.0)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=6.0, help="traffic before and after the kill")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kvserve-cluster-") as tmp:
        work = Path(tmp)
        model, x_test, _ = digits.train()
        paths = digits.save_all_formats(model, work / "model")
        print(f"starting a writer and {args.readers} read-only replicas on {work / 'repository'} (poll {args.poll_seconds} s)")
        cluster = harness.Cluster.start(work, readers=args.readers, poll_seconds=args.poll_seconds)
        try:
            replicas = [cluster.writer, *cluster.readers]
            with Client(cluster.writer.address) as writer:
                writer.upload(paths["h5"], name="digits")
            took = harness.wait_until(lambda: all(harness.model_state(r, "digits") == {"1"} for r in replicas), 120)
            print(f"uploaded through the writer; every replica serves digits:1 after {took:.2f} s")
            print("RSS with digits loaded: " + ", ".join(f"{r.address} {rss_mib(r):.0f} MiB" for r in replicas))
            with harness.Traffic(cluster, "digits", x_test[:8]) as traffic:
                time.sleep(args.seconds / 2)
                victim = cluster.readers[0]
                victim.kill()
                print(f"kill -9 {victim.address} after {traffic.sent} requests")
                time.sleep(1.0)
                restarted = time.monotonic()
                victim.start()
                victim.wait_ready()
                print(f"restarted {victim.address}: ready after {time.monotonic() - restarted:.2f} s")
                time.sleep(args.seconds / 2)
            print(f"{traffic.sent} requests through one round_robin channel: {len(traffic.failures)} failed, "
                  f"{traffic.different} answers differed")
            with Client(cluster.writer.address) as writer:
                writer.delete("digits")
            took = harness.wait_until(lambda: all(harness.gone(r, "digits", x_test[:1]) for r in replicas), 120)
            print(f"deleted through the writer; gone from every replica after {took:.2f} s")
            return 1 if traffic.failures or traffic.different else 0
        finally:
            cluster.stop()


if __name__ == "__main__":
    raise SystemExit(main())
