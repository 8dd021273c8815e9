"""The ``esper`` command."""
