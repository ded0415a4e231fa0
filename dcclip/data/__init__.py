"""Shards, the streaming reader, teacher-feature fields and the built-in toy world."""
