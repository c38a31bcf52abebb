"""The replication agent: trigger capture on the primary, publication of committed transactions to Kafka."""
