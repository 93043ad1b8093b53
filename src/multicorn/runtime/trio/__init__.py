"""The trio backend."""
