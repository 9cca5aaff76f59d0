"""Experiments that can separate the methods: memorisation and expressivity fits (docs/evidence.md)."""
