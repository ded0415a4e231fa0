"""The toy world's languages, one module each, every one defining ``LANGUAGE`` (see ``world.registry``)."""
