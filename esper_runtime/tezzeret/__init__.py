"""Tezzeret: the background compiler that turns blueprints into kernel artifacts."""
