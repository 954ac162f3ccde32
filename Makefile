# The two commands of README.md. Both create .venv/ if it is missing and install into it.
.PHONY: demo test

SHELL := /bin/bash

demo:
	bash scripts/setup.sh
	.venv/bin/radgr demo

test:
	bash scripts/setup.sh
	bash scripts/test.sh
