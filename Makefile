# Each target creates .venv and installs what it needs first, so a fresh clone needs only `make test` or `make demo`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.dcclip-installed
BROWSER_STAMP := $(VENV)/.dcclip-browser-installed
export HF_HUB_OFFLINE ?= 1

.PHONY: install test test-fast test-browser test-arm64 arm64-tools browser-tools screenshot lint demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,serve,dev,index]'
	touch $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint
	$(VENV)/bin/pytest -q --durations=10

# The edit-test loop: everything not marked slow, one xdist worker per core with one torch thread each (a test module
# stays on one worker, so its fixtures are built once); `make test` stays the full suite CI runs, in one process.
test-fast: $(STAMP)
	OMP_NUM_THREADS=1 $(VENV)/bin/pytest -q -m "not slow" -n auto --dist loadfile --durations=10

# The web page in a real headless Chromium against a real `dcclip serve` on loopback. Debian's chromium and
# chromium-driver come from apt when missing (plus fonts for every built-in script); selenium drives them by path, so
# nothing downloads a browser at run time. Screenshots stay in the tests' tmp dirs.
test-browser: $(BROWSER_STAMP) browser-tools
	$(VENV)/bin/pytest -q tests/browser

# The torch-free runtime on aarch64 Linux (Raspberry Pi / Jetson class) under qemu-user: a Debian trixie arm64 root
# (mmdebstrap) with PyPI's aarch64 wheels at constraints.txt's versions, checked against the runtime here (tests/edge).
# Host tools come from apt when missing and qemu-aarch64 is registered with binfmt_misc. Runs as root (mmdebstrap,
# chroot). The root is cached in ~/.cache/dcclip/arm64/<suite+versions> (DCCLIP_ARM64_CACHE overrides).
test-arm64: $(STAMP) arm64-tools
	$(VENV)/bin/pytest -q tests/edge

arm64-tools:
	@SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	if ! command -v mmdebstrap >/dev/null || ! command -v arch-test >/dev/null \
	    || ! command -v qemu-aarch64-static >/dev/null || ! test -x /usr/sbin/update-binfmts; then \
	  $$SUDO apt-get -o DPkg::Lock::Timeout=300 update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get \
	    -o DPkg::Lock::Timeout=300 install -y -q --no-install-recommends \
	    mmdebstrap arch-test qemu-user-static binfmt-support debian-archive-keyring; \
	fi; \
	if ! grep -qs '^enabled' /proc/sys/fs/binfmt_misc/qemu-aarch64; then \
	  test -e /proc/sys/fs/binfmt_misc/register || $$SUDO mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc; \
	  $$SUDO /usr/sbin/update-binfmts --enable qemu-aarch64; \
	fi

# docs/ui.png, the README's picture of the page: the demo bundle (make demo first) classifying in Chinese and Arabic.
screenshot: $(BROWSER_STAMP) browser-tools
	$(PY) tests/browser/screenshot.py --bundle runs/demo/bundle --world runs/demo/world --out docs/ui.png

browser-tools:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null || ! command -v npm >/dev/null \
	    || ! fc-list :lang=zh 2>/dev/null | grep -q . || ! fc-list :lang=hi 2>/dev/null | grep -q . \
	    || ! fc-list :lang=ko 2>/dev/null | grep -q . || ! fc-list :lang=ar 2>/dev/null | grep -q .; then \
	  SUDO=$$(test "$$(id -u)" -eq 0 || echo sudo); \
	  $$SUDO apt-get update -q && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -q --no-install-recommends \
	    chromium chromium-driver fonts-dejavu-core fonts-wqy-microhei fonts-lohit-deva fonts-nanum nodejs npm; \
	fi

$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install -q -c constraints.txt -e '.[train,serve,dev,index,browser]'
	touch $(BROWSER_STAMP)

demo: $(STAMP)
	$(VENV)/bin/dcclip demo --out runs/demo

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info
