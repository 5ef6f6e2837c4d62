"""Generates the Python gRPC stubs in v1/ (the listseg.v1 package) with grpcio-tools' protoc: from
proto/listseg/v1/listseg.proto, and the descriptor of reflection v1 from Debian's grpc-proto
(server/introspection.py serves it; grpcio-reflection has only v1alpha). `make` and the package
build (setup.py) both run it: `python proto/stubs.py`."""
import os
import shutil
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROTO = "listseg/v1/listseg.proto"
GRPC_PROTO_DIR = "/usr/share/grpc-proto"          # Debian's grpc-proto (make proto-sysdeps installs it)
REFLECTION = "grpc/reflection/v1/reflection.proto"
MADE = ("listseg_pb2.py", "listseg_pb2.pyi", "listseg_pb2_grpc.py", "reflection_v1_pb2.py")


def current(root=ROOT):
    """Whether every stub exists and is newer than the .proto."""
    source = os.path.getmtime(os.path.join(root, "proto", PROTO))
    made = [os.path.join(root, "v1", name) for name in MADE]
    return all(os.path.exists(p) and os.path.getmtime(p) >= source for p in made)


def generate(root=ROOT):
    from importlib import resources

    from grpc_tools import protoc
    if not os.path.exists(os.path.join(GRPC_PROTO_DIR, REFLECTION)):
        sys.exit(f"{GRPC_PROTO_DIR}/{REFLECTION} is missing: install Debian's grpc-proto")
    well_known = str(resources.files("grpc_tools") / "_proto")
    with tempfile.TemporaryDirectory() as out:
        for args in ([f"-I{os.path.join(root, 'proto')}", f"--python_out={out}", f"--pyi_out={out}",
                      f"--grpc_python_out={out}", os.path.join(root, "proto", PROTO)],
                     [f"-I{GRPC_PROTO_DIR}", f"--python_out={out}", os.path.join(GRPC_PROTO_DIR, REFLECTION)]):
            if protoc.main(["protoc", f"-I{well_known}", *args]) != 0:
                sys.exit(f"protoc failed: {args}")
        for name in MADE[:3]:
            shutil.copy(os.path.join(out, "listseg", "v1", name), os.path.join(root, "v1", name))
        shutil.copy(os.path.join(out, "grpc", "reflection", "v1", "reflection_pb2.py"),
                    os.path.join(root, "v1", "reflection_v1_pb2.py"))


if __name__ == "__main__":
    generate()
