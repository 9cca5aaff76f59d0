"""Spectral analysis of adapters (placeholder)."""
