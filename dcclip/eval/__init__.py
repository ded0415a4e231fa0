"""Zero-shot classification, retrieval and cross-lingual alignment evaluation."""
