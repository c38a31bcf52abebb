"""Subscribers: apply each source transaction atomically, exactly once, in order, to a read-only replica."""
