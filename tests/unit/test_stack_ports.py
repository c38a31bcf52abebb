"""Local stack ports stay out of the kernel's ephemeral range, so a stopped server's port is not taken meanwhile."""

import socket

from devstack.stack import ephemeral_ports, free_port


def test_ports_are_free_and_below_the_ephemeral_range():
    low, high = ephemeral_ports()
    assert 1024 < low < high
    ports = {free_port() for _ in range(50)}
    assert all(20000 <= port < low for port in ports)
    for port in list(ports)[:5]:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))  # still free: nothing holds it after free_port returns
