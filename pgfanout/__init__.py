"""pgfanout: a publish/distribute replication pipeline for PostgreSQL over Kafka.

``pgfanout.core`` holds the pure parts the agent, the distributor and the subscriber share
(configuration, names, wire messages and codec, positions, row filters); ``pgfanout.runtime``
their I/O helpers (the daemon loop, Kafka, PostgreSQL, the schema registry); ``pgfanout.cli``
the ``pgfanout`` command, the only code that imports the daemons.
"""

__version__ = "0.1.0"
