# Two commands do all set-up: `make test` and `make demo` (each creates .venv if missing).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test test-keras3 test-tf-keras zoo lint demo clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

lint: install
	$(BIN)/ruff check .

# The suite runs twice: under Keras 3 (tf.keras default) and under tf_keras. `make test` runs
# the two side by side (most tests spend their time in single-threaded Python: tracing, model
# building), each flavour's output printed as a block when it ends.
# Each flavour's TensorFlow gets one intra-op thread (and so do the processes its tests start):
# the two suites share the two cores, and two thread pools of two threads each oversubscribe
# them (side by side here: 16:28 with the default threads, 15:14 and 12:39 with one).
TEST_ENV := TF_NUM_INTRAOP_THREADS=1

test-keras3: install
	$(TEST_ENV) $(BIN)/pytest -q -p no:cacheprovider

test-tf-keras: install
	$(TEST_ENV) TF_USE_LEGACY_KERAS=1 $(BIN)/pytest -q -p no:cacheprovider

test: lint
	$(MAKE) --no-print-directory -j2 --output-sync=target test-keras3 test-tf-keras

# Every keras.applications model under both Keras flavours (make test runs one per family;
# it runs every keras-hub backbone too).
zoo: install
	$(BIN)/pytest -q -p no:cacheprovider -m zoo tests/test_zoo.py
	TF_USE_LEGACY_KERAS=1 $(BIN)/pytest -q -p no:cacheprovider -m zoo tests/test_zoo.py

# The main job: DSA's quick schedule, a CIFAR ResNet pruned to 50% of its FLOPs on CIFAR-10
# (from $$TFDS_DATA_DIR, else ../shared/tensorflow_datasets when present, else tfds' default),
# beside the unpruned network trained on the same schedule. Both train on a seeded subset of
# 12,000 of the 50,000 training images, so that the two trainings fit in 15 minutes on 2 CPU
# cores; drop --train_examples for the whole training split (about 4x longer).
DEMO_DATA := $(or $(TFDS_DATA_DIR),$(wildcard ../shared/tensorflow_datasets))

demo: install
	TF_CPP_MIN_LOG_LEVEL=2 $(BIN)/dsa-tf prune --config=quick --dataset=cifar10 --budget=0.5 --reference \
		--train_examples=12000 \
		--out=runs/demo \
		$(if $(DEMO_DATA),--data_dir=$(abspath $(DEMO_DATA)))

clean:
	rm -rf $(VENV) build *.egg-info
