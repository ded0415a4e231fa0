"""Developer tools that check the code base itself (``python -m dcclip.tools.layout``)."""
