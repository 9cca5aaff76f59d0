# make quality: the style checks CI runs first; make test: the README's test command.
.PHONY: quality test
quality:
	ruff check .
	ruff format --check .
test:
	python3 -m pytest
