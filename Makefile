# Two commands do everything on a fresh Debian machine with Python 3.11:
#   make serve   set up .venv (and Debian packages) and start the engine
#   make test    set up .venv (and Debian packages) and run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
DEBIAN_PACKAGES := alsa-utils espeak-ng festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts chromium firefox-esr
STAMP := $(VENV)/.installed

.PHONY: setup test serve lint system-packages weights

setup: $(STAMP)

# '.[ray]': Ray Serve for `server.py --ray` (the server imports it only then;
# tests/test_ray_serve.py runs a real local cluster). The last install: the voice-agent
# plugins (integrations/; the server never imports them, tests/test_pipecat.py and
# tests/test_livekit.py do). pipecat-ai 1.14 moves protobuf 7 -> 6.33 and soxr 1.1 -> 1.0,
# both within what onnx, onnxruntime and this project ask for; livekit-agents 1.8 only adds
# packages.
$(STAMP): pyproject.toml integrations/client/pyproject.toml integrations/pipecat/pyproject.toml \
		integrations/livekit/pyproject.toml Makefile
	$(MAKE) system-packages
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet --no-deps openai-whisper==20250625
	$(PY) -m pip install --quiet -e '.[test,ray]'
	$(PY) -m pip install --quiet -e integrations/client -e 'integrations/pipecat[webrtc]' \
		-e integrations/livekit
	$(PY) -c 'from models.texture_fill import compile_now; compile_now()'
	$(PY) -m export.warm --size 512 --close-ups
	touch $(STAMP)

# Debian packages, installed only when missing (root or sudo).
system-packages:
	@missing=""; for p in $(DEBIAN_PACKAGES); do \
	  dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

# pytest exit code 5 (no tests collected) is a failure, not a pass.
test: setup
	$(PY) -m pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

serve: setup
	$(PY) server.py

# The default motion checkpoint (assets/motion_student.pt), from the project's own data and
# training code: synthetic data -> teacher (with a 4 s motion history: models/motion.py) ->
# 2-step student. Resumable; ~1.7 h on 2 CPU cores.
# (train.augment + a fine-tuning stage on degraded audio were measured and did not help:
# benchmarks/RESULTS.md, "Degraded-audio fine-tuning".)
WEIGHTS_HOURS ?= 1.5
TEACHER_STEPS ?= 7000
weights: setup
	$(PY) -m train.synth --hours $(WEIGHTS_HOURS) --out data/synth --workers 2 --no-progress
	$(PY) -m train.teacher --data data/synth --out runs/teacher --steps $(TEACHER_STEPS) \
	  --history-frames 96 --history-stride 8
	$(PY) -m train.distill --teacher runs/teacher/teacher.pt --data data/synth --out runs/student
	cp runs/student/student.pt assets/motion_student.pt
	$(PY) -m train.evaluate --checkpoint assets/motion_student.pt \
	  --teacher runs/teacher/teacher.pt --data data/synth --json runs/evaluate.json

lint: setup
	$(PY) -m ruff check .
