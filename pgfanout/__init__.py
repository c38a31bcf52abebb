"""pgfanout: a publish/distribute replication pipeline for PostgreSQL over Kafka.

This package holds what the agent, the distributor and the subscriber share:
configuration, the wire codec, positions, Kafka and PostgreSQL helpers, errors,
the local stack and the ``pgfanout`` command.
"""

__version__ = "0.1.0"
