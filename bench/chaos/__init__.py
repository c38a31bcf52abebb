"""The chaos run: a three-level replication tree under a constant-total workload while faults of every kind
hit it at random, a checker that samples every replica throughout, and an account at the end
(``python -m bench.chaos --minutes N``; docs/benchmarks.md, "Chaos run")."""
