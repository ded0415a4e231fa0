"""Comparing the aarch64 target with this machine: embeddings within tolerance, the same final answers (classify,
search, typed errors) and the failures that make a parity check fail. See arm64.py."""

from __future__ import annotations

from typing import Any

from dcclip.export.targets.arm64_root import (
    FP32_TOLERANCE,
    INT8_TOLERANCE,
)

# ------------------------------------------------------------------------------------------------ comparing


def _max_abs(a: Any, b: Any) -> float:
    """Max abs difference of two nested lists of numbers (inf when the shapes differ)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.abs(a - b).max()) if a.shape == b.shape and a.size else (0.0 if a.shape == b.shape else np.inf)


def compare_precision(x86: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    """Embedding and probability differences and top-1 agreement for one precision."""
    langs = {}
    for lang, ours in x86["classify"].items():
        theirs = arm["classify"][lang]
        same = sum(a == b for a, b in zip(ours["top1"], theirs["top1"], strict=True))
        langs[lang] = {
            "top1_identical": same,
            "images": len(ours["top1"]),
            "prob_max_abs": _max_abs(ours["probs"], theirs["probs"]),
        }
    return {
        "image_max_abs": _max_abs(x86["image_embeddings"], arm["image_embeddings"]),
        "text_max_abs": _max_abs(x86["text_embeddings"], arm["text_embeddings"]),
        "classify": langs,
    }


def int8_agreement(result: dict[str, Any]) -> dict[str, float] | None:
    """Per language, the share of images whose int8 top-1 equals the fp32 top-1 on one machine (None without int8)."""
    precisions = result["precisions"]
    if "int8" not in precisions or "fp32" not in precisions:
        return None
    out = {}
    for lang, fp32 in precisions["fp32"]["classify"].items():
        int8 = precisions["int8"]["classify"][lang]["top1"]
        out[lang] = sum(a == b for a, b in zip(fp32["top1"], int8, strict=True)) / max(1, len(int8))
    return out


def compare_cli(x86: list[dict], arm: list[dict]) -> dict[str, Any]:
    """``dcclip classify --json`` on both machines: top-1 identical count and max abs probability difference."""
    top1 = sum(a["labels"][0]["label"] == b["labels"][0]["label"] for a, b in zip(x86, arm, strict=True))
    probs = [[[p["probability"] for p in r["labels"]] for r in rows] for rows in (x86, arm)]
    labels_same = all(
        [p["label"] for p in a["labels"]] == [p["label"] for p in b["labels"]] for a, b in zip(x86, arm, strict=True)
    )
    return {
        "top1_identical": top1,
        "images": len(x86),
        "ranking_identical": labels_same,
        "prob_max_abs": _max_abs(*probs),
    }


def compare_index(x86: dict[str, Any], arm: dict[str, Any]) -> dict[str, Any]:
    """Index rows and text-search hits: same keys in the same order, score and stored-row differences."""
    keys = [[[h[0] for h in hits] for hits in x86["hits"][lang]] for lang in x86["hits"]]
    arm_keys = [[[h[0] for h in hits] for hits in arm["hits"][lang]] for lang in x86["hits"]]
    scores = [[[h[1] for h in hits] for hits in side["hits"][lang]] for side in (x86, arm) for lang in x86["hits"]]
    half = len(scores) // 2
    return {
        "count": [x86["count"], arm["count"]],
        "keys_identical": x86["keys"] == arm["keys"],
        "hits_identical": keys == arm_keys,
        "score_max_abs": _max_abs(scores[:half], scores[half:]),
        "embeddings_max_abs": _max_abs(x86["embeddings"], arm["embeddings"]),
    }


def compare(x86: dict[str, Any], arm: dict[str, Any], cli_x86: list[dict], cli_arm: list[dict]) -> dict[str, Any]:
    """The parity report: per precision, the classify CLI, the index, int8 agreement, BLAS checks and errors."""
    return {
        "precisions": {p: compare_precision(x86["precisions"][p], arm["precisions"][p]) for p in x86["precisions"]},
        "cli": compare_cli(cli_x86, cli_arm),
        "index": compare_index(x86["index"], arm["index"]),
        "int8_agreement": {"x86": int8_agreement(x86), "arm64": int8_agreement(arm)},
        "blas_check_max_abs": {"x86": x86["blas_check_max_abs"], "arm64": arm["blas_check_max_abs"]},
        "errors_identical": x86["errors"] == arm["errors"],
        "errors": {"x86": x86["errors"], "arm64": arm["errors"]},
    }


def parity_failures(
    report: dict[str, Any], fp32_tol: float = FP32_TOLERANCE, int8_tol: float = INT8_TOLERANCE
) -> list[str]:
    """Every way the arm64 answers miss the x86 ones (empty: parity holds)."""
    failures = []
    for precision, figures in report["precisions"].items():
        tol = fp32_tol if precision == "fp32" else int8_tol
        for what in ("image_max_abs", "text_max_abs"):
            if not figures[what] <= tol:
                failures.append(f"{precision} {what} {figures[what]:.3g} > {tol:g}")
        for lang, row in figures["classify"].items():
            if row["top1_identical"] != row["images"]:
                failures.append(f"{precision} {lang}: top-1 identical on {row['top1_identical']}/{row['images']}")
    cli, index = report["cli"], report["index"]
    if cli["top1_identical"] != cli["images"] or not cli["ranking_identical"]:
        failures.append(f"dcclip classify: top-1 identical on {cli['top1_identical']}/{cli['images']}")
    if not (index["keys_identical"] and index["hits_identical"]):
        failures.append("index: rows or search hits differ")
    if not report["errors_identical"]:
        failures.append(f"typed errors differ: {report['errors']}")
    return failures
