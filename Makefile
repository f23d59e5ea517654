# The two commands of the README:
#   make run   set up, then train/evaluate/impute on the embedded data set and write reports/uci_mfeat/ (anew)
#   make test  set up, then lint and format-check (ruff) and run the test suite
#   make notebooks  execute the four notebooks and render them to HTML under reports/notebooks/
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed
# test processes: the suite's tests each run PyTorch on one thread, so one process per core
TEST_WORKERS ?= 2

.PHONY: setup run test notebooks clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e .[test]
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/pyro-mfm run models/uci_mfeat.toml --out reports/uci_mfeat --overwrite

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist worksteal

notebooks: $(STAMP)
	$(BIN)/python inference/render_notebooks.py --out reports/notebooks

clean:
	rm -rf $(VENV) reports .pytest_cache
