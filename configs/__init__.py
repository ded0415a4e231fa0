"""Run configs (YAML) and model architectures (JSON) shipped with dcclip (installed as dcclip.configs)."""

from pathlib import Path

CONFIG_DIR = Path(__file__).resolve().parent
MODEL_CONFIG_DIR = CONFIG_DIR / "models"
