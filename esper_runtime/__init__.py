"""Esper runtime: the ML side (Kasmina, Tamiyo, Tolaria, ...) and the user-facing CLI."""
