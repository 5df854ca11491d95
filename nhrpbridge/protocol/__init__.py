"""Pure wire codecs: bytes in, messages out, no I/O (see tests/test_purity.py)."""
