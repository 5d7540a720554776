"""Readers of BP4D, BP4D+, DISFA and FEC (real or synthetic: same layouts, same code)."""
