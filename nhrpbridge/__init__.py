"""nhrpbridge: libreswan <-> FRR nhrpd bridge.

Only the version lives here so that importing any submodule (the hook path, the CLI)
pulls in nothing but the standard library until it asks for more.
"""
__version__ = "0.1.0"
__all__ = ["__version__"]
