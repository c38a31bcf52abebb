"""The development stack, not installed with pgfanout: throwaway PostgreSQL clusters and a KRaft Kafka broker
on loopback ports, the demo, and the sample workload the tests and benchmarks use."""
