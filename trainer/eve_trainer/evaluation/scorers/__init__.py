"""Scorers: each benchmark's own rules, as pure functions of answer lines and annotations (torch-free)."""
