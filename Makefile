# hako: quick start is `make demo` and `make test` on a fresh Debian 12 machine as root.
SHELL := /bin/bash
PREFIX ?= /usr/local
HAKO := build/bin/hako
STAMP := build/.stamps

# Debian packages hako needs at build, test and run time.
APT_PACKAGES := qemu-system-x86 qemu-utils busybox-static crun containerd cpio erofs-utils xz-utils zstd \
	iproute2 kmod util-linux procps containernetworking-plugins runc binutils gcc libc6-dev
# Only for `hako image build --kernel minimal` (benchmarks).
APT_KERNEL_BUILD := linux-source-6.1 bc bison flex libelf-dev libssl-dev build-essential

.PHONY: all setup deps apt npm build image image-minimal demo test unit bench install uninstall clean typecheck gen

all: setup

setup: deps build image

deps: apt npm

# Installs only what is missing; apt-get update only when something is.
apt:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
	@ls /var/lib/apt/lists/*_Packages >/dev/null 2>&1 || apt-get update -qq

apt-kernel-build:
	@missing=$$(for p in $(APT_KERNEL_BUILD); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages: $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

# npm ci when package-lock.json changed since the last install.
npm: node_modules/.hako-lock
node_modules/.hako-lock: package-lock.json
	npm ci --no-audit --no-fund
	@cp package-lock.json $@

build: npm
	node scripts/build.mjs

typecheck: npm
	npx tsc -p tsconfig.json --noEmit

# Regenerates src/protocols/gen from the .proto files with Debian's protoc and
# protoc-gen-es (generated code is committed; never edit it by hand).
PROTOS := hako/agent/v1/agent.proto hako/agent/v1/health.proto ttrpc/ttrpc.proto \
	containerd/types/mount.proto containerd/types/task.proto containerd/runtime/task/v2/shim.proto \
	containerd/events/task.proto containerd/services/events/ttrpc/v1/events.proto \
	containerd/cgroups/v1/metrics.proto runtimeoptions/v1/api.proto \
	cri/runtime/v1/api.proto
gen: npm
	@dpkg-query -W protobuf-compiler libprotobuf-dev >/dev/null 2>&1 || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq protobuf-compiler libprotobuf-dev >/dev/null
	cd src/protocols/proto && protoc --plugin=protoc-gen-es=$(CURDIR)/node_modules/.bin/protoc-gen-es \
		--es_out=../gen --es_opt=target=ts,import_extension=js -I . -I /usr/include $(PROTOS)

image: build
	$(HAKO) image build

image-minimal: build apt-kernel-build
	$(HAKO) image build --kernel both

demo: setup
	bash scripts/demo.sh

test: setup
	node scripts/run-tests.mjs

unit: build
	node scripts/run-tests.mjs $$(ls test/unit/*.test.ts)

bench: setup image-minimal
	node --import tsx bench/run.ts

install: setup
	install -d $(PREFIX)/bin $(PREFIX)/lib/hako $(PREFIX)/share/hako/guest
	cp -a build/lib/hako/. $(PREFIX)/lib/hako/
	cp -a build/share/hako/guest/. $(PREFIX)/share/hako/guest/
	install -m 0644 build/share/hako/configuration.toml $(PREFIX)/share/hako/configuration.toml
	for b in build/bin/*; do install -m 0755 $$b $(PREFIX)/bin/; done
	@echo "installed hako into $(PREFIX)"

uninstall:
	rm -rf $(PREFIX)/lib/hako $(PREFIX)/share/hako
	rm -f $(PREFIX)/bin/hako $(PREFIX)/bin/containerd-shim-hako-v2

clean:
	rm -rf build
