"""Data shipped with the package (see SOURCE.md)."""
