"""Teachers, students and tokenizers. Submodules are imported explicitly so the runtime stays torch-free."""
