"""Performance benchmarks: each prints its figures beside a baseline measured in the same run.

- `python -m benchmarks.bus`: agent -> agent throughput and latency through the coordinator,
  against raw pyzmq between two processes.
- `python -m benchmarks.startup`: launch-to-all-READY and teardown of N real agents.

See benchmarks/README.md for what each figure means and the targets from DESIGN.md.
"""
