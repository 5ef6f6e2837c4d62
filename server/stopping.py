"""Waiting in the main thread for SIGTERM or SIGINT (`listseg serve`, its workers, `listseg dashboard`)."""
import signal
import threading

POLL_S = 0.2     # how late a stop may be seen: see StopSignals.wait


class StopSignals:
    """Catches SIGTERM and SIGINT from its creation on (create it before a server starts: a signal in
    between would kill the process undrained)."""

    def __init__(self):
        self.received = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.received.set())

    def wait(self, unless=lambda: False):
        """Until a stop signal came (True) or `unless()` holds (False). It polls: the kernel hands a
        process's signal to any of its threads, and Python runs the handler in the main thread only when
        that thread runs code, so a main thread asleep without a timeout may never see the signal."""
        while not self.received.wait(POLL_S):
            if unless():
                return False
        return True
