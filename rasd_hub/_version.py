"""The package version, in a module of its own so that rasd_hub's modules can read it without
importing the package they belong to."""

__version__ = "0.1.0"
