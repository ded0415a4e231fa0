"""The one rule for turning typed text into class labels, shared by the CLI, ``/v1/classify`` and the page.

A label list typed as one string splits on the ASCII comma, on line breaks, and on the commas of the scripts whose
writers do not type an ASCII comma: the fullwidth comma ``，`` (U+FF0C) and the ideographic comma ``、`` (U+3001) of
Chinese and Japanese, and the Arabic comma ``،`` (U+060C). Each piece is trimmed and blank pieces are dropped. The
page's JavaScript (``dcclip/serve/static/app.js``, ``LABEL_SEPARATORS``) mirrors ``LABEL_SEPARATORS`` character for
character; a browser test checks both give the same labels on the same inputs.
"""

from __future__ import annotations

import re

__all__ = ["LABEL_SEPARATORS", "split_labels"]

# ASCII comma, LF, CR, FULLWIDTH COMMA, IDEOGRAPHIC COMMA, ARABIC COMMA.
LABEL_SEPARATORS = ",\n\r\uff0c\u3001\u060c"
_SPLIT = re.compile("[" + re.escape(LABEL_SEPARATORS) + "]+")


def split_labels(text: str) -> list[str]:
    """Labels from one typed string: split on any separator above, trimmed, blanks dropped, order kept."""
    return [piece.strip() for piece in _SPLIT.split(text) if piece.strip()]
