"""The embedded local stack: throwaway PostgreSQL clusters and a real Kafka broker, no Docker."""
