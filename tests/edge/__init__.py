"""Edge-target tests (a package, so its conftest imports as edge.conftest, not as the top-level conftest)."""
