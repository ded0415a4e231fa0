"""Moved to helpers/serve_bundles.py; this name stays only for test files whose owners have not switched yet
(test_hardening_*, test_target_*, test_model_card, benchmarks/arm64_parity.py): import ``helpers.serve_bundles``."""

from helpers.serve_bundles import onnx_bundle, student_bundle

__all__ = ["onnx_bundle", "student_bundle"]
