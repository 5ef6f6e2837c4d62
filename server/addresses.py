"""HOST:PORT addresses: one rule for which hosts are loopback, used by the server, the dashboard and
(told by a flag) the membership front. With no account, each of them listens only on loopback."""
import ipaddress
import socket


def split_address(address, what="listen address"):
    """(host as written, brackets and all; port) of HOST:PORT."""
    host, _, port = address.rpartition(":")
    if not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"{what} must be HOST:PORT, got {address!r}")
    return host, int(port)


def is_loopback(host):
    """True when every address `host` names is a loopback one ("127.0.0.1", "[::1]", "localhost", or a
    name that resolves only to loopback addresses)."""
    if host in ("localhost", ""):
        return host == "localhost"
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        try:
            return all(ipaddress.ip_address(a[4][0]).is_loopback for a in socket.getaddrinfo(host, None))
        except OSError:
            return False


def local_host(listen):
    """The host a client on this machine dials to reach a server listening on `listen`."""
    host = split_address(listen)[0]
    return {"0.0.0.0": "127.0.0.1", "[::]": "[::1]", "": "127.0.0.1"}.get(host, host)
