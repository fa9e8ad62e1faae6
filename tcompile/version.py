"""The package version, in a module of its own so that the compiler can stamp it into artifacts
without importing the package's front door (tcompile/__init__.py), which imports it lazily."""
__version__ = "0.1.0"
