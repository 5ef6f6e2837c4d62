"""A real local Redis Cluster: 3 primaries and 3 replicas of Debian's redis-server on free loopback
ports, in a folder of its own, made with `redis-cli --cluster create`. `make cluster` runs it from the
command line; the tests (tests/conftest.py) and the cluster benchmark start it from Python.

    python tests/cluster.py start [--dir DIR]   # prints the --store URL; the pids go to DIR/pids
    python tests/cluster.py stop --dir DIR      # stops it by those pids

Nodes run with the settings issue 12 asks of a test cluster: AOF with fsync every second, a primary
refusing writes while it has no replica in reach (min-replicas-to-write 1), and a short node timeout so
a failover takes seconds, not the default 15 s.
"""
import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

LOOPBACK = "127.0.0.1"
NODE_TIMEOUT_MS = 2000
PRIMARIES, REPLICAS = 3, 1


def free_ports(n):
    """n loopback ports free now, each with its cluster bus port (port + 10000) free too."""
    ports, held = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind((LOOPBACK, 0))
        port = s.getsockname()[1]
        held.append(s)
        if port + 10000 > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind((LOOPBACK, port + 10000))
            except OSError:
                continue
        ports.append(port)
    for s in held:
        s.close()
    return ports


def node_config(port, folder):
    """A node's settings; its files (AOF, nodes.conf) in a folder of its own: nodes sharing one
    would write one appendonlydir."""
    node_dir = os.path.join(folder, f"node-{port}")
    os.makedirs(node_dir, exist_ok=True)
    return "\n".join([
        f"port {port}", f"bind {LOOPBACK}", "protected-mode no", f"dir {node_dir}",
        "cluster-enabled yes", f"cluster-config-file nodes-{port}.conf", f"cluster-node-timeout {NODE_TIMEOUT_MS}",
        "appendonly yes", "appendfsync everysec", 'save ""', "min-replicas-to-write 1", "min-replicas-max-lag 10",
        "hash-max-listpack-entries 512",     # identity buckets stay listpack (core/layout.py REDIS_BUCKETS)
        f"logfile {folder}/redis-{port}.log", "",
    ])


class Cluster:
    """The nodes' processes (Popen when started here, else pids read back from DIR/pids)."""

    def __init__(self, folder, ports, procs=None, pids=None):
        self.folder, self.ports = folder, ports
        self.procs = procs or {}
        self.pids = pids or {port: p.pid for port, p in self.procs.items()}

    @property
    def url(self):
        return "redis-cluster://" + ",".join(f"{LOOPBACK}:{p}" for p in self.ports)

    # -- one node ---------------------------------------------------------------------------------
    def start_node(self, port):
        """(Re)start the node on port, from its config (and its AOF, if it has one)."""
        conf = os.path.join(self.folder, f"redis-{port}.conf")
        proc = subprocess.Popen(["redis-server", conf], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        self.procs[port], self.pids[port] = proc, proc.pid
        wait_for(lambda: cli(port, "PING") == "PONG", 20, f"redis-server on port {port} did not start")

    def kill_node(self, port, sig=signal.SIGKILL):
        os.kill(self.pids[port], sig)
        proc = self.procs.get(port)
        if proc is not None:
            proc.wait()

    def role(self, port):
        return cli(port, "ROLE").split()[0]

    def primaries(self):
        return [p for p in self.ports if self.alive(p) and self.role(p) == "master"]

    def commands_run(self, counts=lambda name: True):
        """Commands the primaries have run so far (INFO commandstats), of the names `counts` takes
        ("hget", "evalsha", "cluster|slots"...); a script counts once, and once more for each
        command it calls."""
        total = 0
        for port in self.primaries():
            for line in cli(port, "INFO", "commandstats").splitlines():
                name, _, stats = line.removeprefix("cmdstat_").partition(":")
                if line.startswith("cmdstat_") and counts(name):
                    total += int(stats.split("calls=", 1)[1].split(",", 1)[0])
        return total

    def replicas_of(self, port):
        """The ports of the replicas of the primary on port."""
        info = cli(port, "INFO", "replication")
        return [int(line.split("port=", 1)[1].split(",", 1)[0]) for line in info.splitlines()
                if line.startswith("slave") and "port=" in line]

    def alive(self, port):
        try:
            os.kill(self.pids[port], 0)
        except OSError:
            return False
        proc = self.procs.get(port)
        return proc is None or proc.poll() is None

    def wait_ok(self, timeout=60):
        """Until every live node says the cluster is ok and every slot is served."""
        def ok():
            for port in self.ports:
                if not self.alive(port):
                    continue
                info = cli(port, "CLUSTER", "INFO")
                if "cluster_state:ok" not in info or "cluster_slots_ok:16384" not in info:
                    return False
            return True
        wait_for(ok, timeout, "the cluster did not become ok")

    def wait_replicated(self, timeout=60):
        """Until every primary has its replicas online (min-replicas-to-write lets it write then)."""
        def online():
            primaries = self.primaries()
            return len(primaries) == PRIMARIES and all(
                cli(p, "INFO", "replication").count("state=online") >= REPLICAS for p in primaries)
        wait_for(online, timeout, "the replicas did not come online")

    # -- the whole cluster -----------------------------------------------------------------------
    def stop(self):
        for port in self.ports:
            try:
                os.kill(self.pids[port], signal.SIGKILL)
            except (OSError, KeyError):
                pass
        for proc in self.procs.values():
            proc.wait()


def cli(port, *args, timeout=10):
    out = subprocess.run(["redis-cli", "-h", LOOPBACK, "-p", str(port), *args], capture_output=True, text=True,
                         timeout=timeout)
    return out.stdout.strip()


def wait_for(condition, timeout, message):
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (subprocess.SubprocessError, OSError):
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(message)
        time.sleep(0.05)


def start(folder=None):
    """A new cluster of PRIMARIES primaries with REPLICAS replicas each, in folder (a new temp folder
    by default), ok and serving every slot when this returns."""
    if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        raise RuntimeError("redis-server is not installed (make cluster-sysdeps installs it)")
    folder = folder or tempfile.mkdtemp(prefix="listseg-cluster-")
    os.makedirs(folder, exist_ok=True)
    ports = free_ports(PRIMARIES * (1 + REPLICAS))
    cluster = Cluster(folder, ports)
    try:
        for port in ports:
            with open(os.path.join(folder, f"redis-{port}.conf"), "w") as f:
                f.write(node_config(port, folder))
            cluster.start_node(port)
        out = subprocess.run(["redis-cli", "--cluster", "create", *(f"{LOOPBACK}:{p}" for p in ports),
                              "--cluster-replicas", str(REPLICAS), "--cluster-yes"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {out.stdout[-2000:]}{out.stderr[-2000:]}")
        cluster.wait_ok()
        # every replica in sync, so min-replicas-to-write lets the primaries write
        cluster.wait_replicated()
    except BaseException:
        cluster.stop()
        raise
    with open(os.path.join(folder, "pids"), "w") as f:
        f.write("".join(f"{port} {pid}\n" for port, pid in cluster.pids.items()))
    return cluster


def attach(folder):
    """The cluster started in folder, from its pids file (to stop it from another process)."""
    with open(os.path.join(folder, "pids")) as f:
        pids = {int(port): int(pid) for port, pid in (line.split() for line in f if line.strip())}
    return Cluster(folder, list(pids), pids=pids)


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("command", choices=("start", "stop"))
    ap.add_argument("--dir", help="the cluster's folder (start: a new temp folder by default)")
    args = ap.parse_args(argv)
    if args.command == "start":
        cluster = start(args.dir)
        print(f"Redis Cluster up in {cluster.folder} (pids in {cluster.folder}/pids)")
        print(f"  listseg serve --store {cluster.url}")
        print(f"  stop it: python tests/cluster.py stop --dir {cluster.folder}")
    else:
        if not args.dir:
            ap.error("stop needs --dir")
        attach(args.dir).stop()
        print(f"stopped the cluster in {args.dir}")


if __name__ == "__main__":
    main(sys.argv[1:])
