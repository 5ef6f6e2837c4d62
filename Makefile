# listseg — `make run` serves, `make test` tests; both set up whatever is missing first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SCALE  ?= 10000000
PYX    := $(wildcard core/*.pyx core/*.pxi core/*.pxd core/includes/*.pxd)
PROTO  := proto/listseg/v1/listseg.proto
STUBS  := v1/listseg_pb2.py v1/reflection_v1_pb2.py
FRONT  := server/native/listseg-front

.PHONY: install test test-twin bench-core bench bench-soak run clean cluster cluster-stop sysdeps front-sysdeps redis-sysdeps browser-sysdeps node-sysdeps proto-sysdeps

install: $(VENV)/.built $(STUBS) $(FRONT)

# liblmdb's headers and library, for the compiled store (Debian's package; we run as root here).
sysdeps:
	@test -f /usr/include/lmdb.h || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq liblmdb-dev >/dev/null; \
	  else echo "liblmdb-dev is missing: run 'sudo apt-get install liblmdb-dev'" >&2; exit 1; fi; }

# grpc's own .proto files (health, reflection v1 and v1alpha): the front's reflection describes
# them, and the server's reflection v1 descriptor is compiled from them (Debian's grpc-proto).
GRPC_PROTO_DIR := /usr/share/grpc-proto
proto-sysdeps:
	@test -e $(GRPC_PROTO_DIR)/grpc/reflection/v1/reflection.proto || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq grpc-proto >/dev/null; \
	  else echo "grpc-proto is missing: run 'sudo apt-get install grpc-proto'" >&2; exit 1; fi; }

# The native membership front's toolchain: gRPC C++ and its protoc plugin, CRoaring, OpenSSL's SHA-256,
# hiredis (its Redis source) and zlib (the CRC-32 that picks a key's bucket, as Python's zlib does).
FRONT_HEADERS := /usr/include/grpcpp/grpcpp.h /usr/bin/grpc_cpp_plugin /usr/include/roaring/roaring.h /usr/include/openssl/sha.h \
  /usr/include/hiredis/hiredis.h /usr/include/zlib.h
front-sysdeps: | proto-sysdeps
	@for f in $(FRONT_HEADERS); do test -e $$f || missing=1; done; [ -z "$$missing" ] || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq libgrpc++-dev protobuf-compiler-grpc \
	    libprotobuf-dev libroaring-dev libssl-dev libhiredis-dev zlib1g-dev pkg-config >/dev/null; \
	  else echo "run 'sudo apt-get install libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev libroaring-dev libssl-dev libhiredis-dev zlib1g-dev'" >&2; exit 1; fi; }

# C++ stubs from the same .proto, the messages the front's health, reflection and errors carry (so
# reflection can describe them; google/rpc from the pinned googleapis-common-protos), then one binary
# (server/front.py starts it).
FRONT_SRC    := $(addprefix server/native/,membership_front.cc reflection.cc lmdb_source.cc redis_source.cc redis_cluster.cc redis_watch.cc bucket_cache.cc)
FRONT_PROTOS := grpc/health/v1/health.proto grpc/reflection/v1/reflection.proto grpc/reflection/v1alpha/reflection.proto
RPC_PROTOS   := google/rpc/status.proto google/rpc/error_details.proto
$(FRONT): $(FRONT_SRC) $(wildcard server/native/*.h) $(PROTO) $(VENV)/.deps | sysdeps front-sysdeps
	rm -rf build/front && mkdir -p build/front
	rpc=$$($(BIN)/python -c 'import google.rpc.status_pb2 as m, os; print(m.__file__.rsplit("/google/", 1)[0])') && \
	protoc -Iproto -I$(GRPC_PROTO_DIR) -I$$rpc --cpp_out=build/front $(PROTO) $(FRONT_PROTOS) $(RPC_PROTOS)
	protoc -Iproto --grpc_out=build/front --plugin=protoc-gen-grpc=/usr/bin/grpc_cpp_plugin $(PROTO)
	g++ -O2 -std=c++17 -Wall -Ibuild/front -o $@ $(FRONT_SRC) $$(find build/front -name '*.pb.cc') \
	  $$(pkg-config --cflags --libs grpc++ protobuf lmdb libcrypto hiredis zlib) -lroaring

$(VENV)/.deps: requirements.txt requirements-run.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check pip==25.3   # a pip that builds editable installs (PEP 660)
	$(BIN)/pip install -q --disable-pip-version-check -r requirements.txt
	touch $@

# An editable install: builds the extensions in place (core/*.so) and puts `listseg` on the path
# (setup.py compiles the reflection v1 descriptor too, from grpc-proto).
$(VENV)/.built: $(VENV)/.deps $(PYX) setup.py pyproject.toml | sysdeps proto-sysdeps
	$(BIN)/pip install -q --disable-pip-version-check --no-build-isolation --no-deps -e .
	touch $@

# Stubs land in v1/, which is the listseg.v1 package (this folder is the listseg package), with the
# descriptor of reflection v1 (server/introspection.py serves it; grpcio-reflection has only v1alpha):
# proto/stubs.py, which the package build (setup.py) runs too.
$(STUBS) &: $(PROTO) proto/stubs.py $(VENV)/.deps | proto-sysdeps
	$(BIN)/python proto/stubs.py

# The dashboard's browser tests drive Debian's chromium through its chromedriver (no browser download).
browser-sysdeps:
	@test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium chromium-driver'" >&2; exit 1; fi; }

# tests/test_interop.py drives the front with Node's grpc-js too: Debian's node and npm, and the
# pinned packages of tests/interop/package-lock.json (npm ci, again only when the lock changes).
INTEROP := tests/interop
node-sysdeps:
	@command -v node >/dev/null && command -v npm >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null; \
	  else echo "node and npm are missing: run 'sudo apt-get install nodejs npm'" >&2; exit 1; fi; }

$(INTEROP)/.stamp-npm: $(INTEROP)/package.json $(INTEROP)/package-lock.json | node-sysdeps
	cd $(INTEROP) && npm ci --no-audit --no-fund --loglevel=error
	touch $@

test: install $(INTEROP)/.stamp-npm | browser-sysdeps redis-sysdeps
	$(BIN)/python -m pytest -q tests

# The whole suite against the pure-Python twins (no compiled code loaded).
test-twin: install $(INTEROP)/.stamp-npm | browser-sysdeps redis-sysdeps
	LISTSEG_NO_EXTENSIONS=1 $(BIN)/python -m pytest -q tests

bench-core: install
	$(BIN)/python benchmarks/bench_core.py --scale $(SCALE)

# Side by side with Redis (Debian's redis-server, installed if absent) and a plain-Python script.
$(VENV)/.bench-deps: benchmarks/requirements.txt $(VENV)/.deps
	$(BIN)/pip install -q --disable-pip-version-check -r benchmarks/requirements.txt
	touch $@

redis-sysdeps:
	@command -v redis-server >/dev/null || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y -qq redis-server >/dev/null; \
	  else echo "redis-server is missing: run 'sudo apt-get install redis-server'" >&2; exit 1; fi; }

bench: install $(VENV)/.bench-deps | redis-sysdeps
	$(BIN)/python benchmarks/bench.py --scale $(SCALE)

bench-soak: install $(VENV)/.bench-deps | redis-sysdeps
	$(BIN)/python benchmarks/soak.py

# ListMemberChanges between versions 1% and 10% apart against ListMembers of the whole segment
# (benchmarks/bench_changes.py); writes benchmarks/results/changes.json.
.PHONY: bench-changes
bench-changes: install
	$(BIN)/python benchmarks/bench_changes.py --scale $(SCALE)

# A 1 GB upload resumed after two connection resets against the same upload unbroken, both through a
# TCP proxy (benchmarks/bench_resume.py); writes benchmarks/results/resume.json.
BYTES ?= 1000000000
.PHONY: bench-resume
bench-resume: install
	$(BIN)/python benchmarks/bench_resume.py --bytes $(BYTES)

# The seed's headline at full size (issue 16): generated profiles and list (benchmarks/gen/gen_scale.c),
# imported and uploaded through a real server; writes benchmarks/results/scale.json. The issue's size:
# make bench-scale PROFILES=150000000 ROWS=150000000 (about 40 GB of disk for data and files).
# MIXED=1: half the known rows by identity; PROBE_RATE=N: IsMember calls a second during the upload
# (0: one call after another).
PROFILES ?= 2000000
ROWS ?= 2000000
.PHONY: bench-scale
bench-scale: install
	$(BIN)/python benchmarks/bench_scale.py --profiles $(PROFILES) --rows $(ROWS) $(if $(filter 1,$(MIXED)),--mixed) \
		$(if $(PROBE_RATE),--probe-rate $(PROBE_RATE))

# listseg on a local Redis Cluster (tests/cluster.py, stopped at the end) beside plain Redis sets on the
# same cluster; writes benchmarks/results/cluster.json. SCALE defaults to 1000000 here.
.PHONY: bench-cluster
bench-cluster: install $(VENV)/.bench-deps | redis-sysdeps
	$(BIN)/python benchmarks/bench_cluster.py --scale $(if $(filter file,$(origin SCALE)),1000000,$(SCALE))

# A local Redis Cluster (3 primaries, 3 replicas) on free loopback ports, in CLUSTER_DIR: prints the
# --store URL; `make cluster-stop` stops it by its pids. The tests start their own the same way.
CLUSTER_DIR ?= /tmp/listseg-cluster
cluster: install | redis-sysdeps
	$(BIN)/python tests/cluster.py start --dir $(CLUSTER_DIR)

cluster-stop:
	$(BIN)/python tests/cluster.py stop --dir $(CLUSTER_DIR)

# Serve gRPC on 127.0.0.1:50051, the membership front on 127.0.0.1:50052 and the dashboard on
# http://127.0.0.1:8080, LMDB in ./data
# (override: make run ARGS="--listen 127.0.0.1:6000 --http 127.0.0.1:9000").
run: install
	$(BIN)/listseg serve --data ./data --membership-listen 127.0.0.1:50052 --http 127.0.0.1:8080 $(ARGS)

clean:
	rm -rf build *.egg-info $(FRONT) core/*.so core/*.c core/*.html v1/*_pb2* .pytest_cache .hypothesis
	rm -f $(VENV)/.built
	rm -rf $(INTEROP)/node_modules $(INTEROP)/.stamp-npm
