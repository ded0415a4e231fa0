"""Helpers shared by the tests (not test modules): generated data and images, torch threads, tiny checkpoints and
bundles built once per session, a server process, stage shortcuts and an added toy-world language. ``tests/`` is on
``sys.path`` (pytest imports tests/conftest.py from there), so tests import ``helpers.<module>``."""
