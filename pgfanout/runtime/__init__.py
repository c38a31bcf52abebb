"""The I/O helpers the daemons share: the daemon loop, Kafka, PostgreSQL and the schema registry topic."""
