"""Switching from chorus-upload: its journals and its config."""
