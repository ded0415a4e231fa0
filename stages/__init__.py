"""Stage entry points (installed as dcclip.stages): each builds task and data from a config and runs the engine."""
