"""The native membership front (server/native/membership_front.cc) as a child of `listseg serve`.

It serves the Membership service on its own address: IsMember from the server's LMDB files in native
code, everything else relayed to this server. Campaign engines that make one look-up per call point
at it; the server itself is unchanged.
"""
import json
import os
import select
import subprocess

BINARY = os.environ.get("LISTSEG_FRONT") or os.path.join(os.path.dirname(__file__), "native", "listseg-front")
READY_TIMEOUT = 30.0


class FrontError(OSError):
    pass


class Front:
    """A running front: `port`, `stop()`. `backend` is this server's HOST:PORT as a client dials
    it; with TLS, `tls` is (cert, key) and `backend_ca` what the front trusts for the backend."""

    def __init__(self, listen, backend, data, tls=None, backend_ca=None):
        if not os.access(BINARY, os.X_OK):
            raise FrontError(f"the membership front is not built ({BINARY}); run `make install`")
        args = [BINARY, "--listen", listen, "--backend", backend, "--data", os.path.abspath(data)]
        if tls:
            args += ["--tls-cert", tls[0], "--tls-key", tls[1], "--backend-ca", backend_ca or tls[0]]
        # stderr is the server's: the front's own errors land in the same log
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self.port = self._wait_ready()

    def _wait_ready(self):
        ready, _, _ = select.select([self.proc.stdout], [], [], READY_TIMEOUT)
        line = self.proc.stdout.readline() if ready else b""
        if not line:
            self.stop()
            raise FrontError(f"the membership front did not start (exit code {self.proc.returncode})")
        return json.loads(line)["port"]

    def stop(self, timeout=5.0):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
