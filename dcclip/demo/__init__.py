"""``dcclip demo``: the whole pipeline offline on the toy world (``run``), its report (``report``) and the stand-in
teacher it trains (``teacher``). The top floor of the library below the CLI: it may use every other room."""

from dcclip.demo.run import DemoSettings, DemoStepError, build_steps, main_entry, run_demo

__all__ = ["DemoSettings", "DemoStepError", "build_steps", "main_entry", "run_demo"]
