"""Moved to helpers/server_process.py; this name stays only for test files whose owners have not switched yet
(test_hardening_serve): import ``helpers.server_process``."""

from helpers.server_process import STARTUP_SECONDS, ServerProcess, free_port

__all__ = ["STARTUP_SECONDS", "ServerProcess", "free_port"]
