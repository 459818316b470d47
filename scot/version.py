"""The package version (one place: the package, its records and its build read it here)."""

__version__ = "0.1.0"
