"""kvserve."""
