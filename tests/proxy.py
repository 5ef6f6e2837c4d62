"""A TCP proxy on a loopback port that forwards to a server and can drop every connection through it
at once, as a network that breaks does (a reset on both sides, nothing more delivered)."""
import socket
import struct
import threading

from harness import LOOPBACK


class Proxy:
    def __init__(self, target):
        host, port = target.rsplit(":", 1)
        self.upstream = (host, int(port))
        self.listener = socket.create_server((LOOPBACK, 0))
        self.target = f"{LOOPBACK}:{self.listener.getsockname()[1]}"
        self.pairs = []                 # [(client side, server side)] of the open connections
        self.cuts = 0
        self.sent_up = 0                # bytes forwarded from the clients to the server
        self.dropped = set()            # the sockets of the connections cut
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True, name="proxy-accept").start()

    def _accept(self):
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return                  # closed
            try:
                up = socket.create_connection(self.upstream)
            except OSError:
                down.close()
                continue
            with self.lock:
                self.pairs.append((down, up))
            for src, dst, counted in ((down, up, True), (up, down, False)):
                threading.Thread(target=self._pump, args=(src, dst, counted), daemon=True, name="proxy-pump").start()

    def _pump(self, src, dst, counted):
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                if counted:
                    with self.lock:
                        self.sent_up += len(data)
            if src not in self.dropped:
                dst.shutdown(socket.SHUT_WR)    # a clean end goes on as one
        except OSError:
            pass                            # cut, or the other side went away
        src.close()                         # after a cut: SO_LINGER 0, so a reset

    def cut(self):
        """Reset every connection through the proxy now: nothing more is delivered either way, and
        each side gets a RST (a close with SO_LINGER 0; SHUT_RD wakes the pump blocked reading)."""
        with self.lock:
            pairs, self.pairs = self.pairs, []
            self.cuts += 1
        self.dropped.update(s for pair in pairs for s in pair)
        for pair in pairs:
            for s in pair:
                try:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    s.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    def close(self):
        self.listener.close()
        self.cut()
