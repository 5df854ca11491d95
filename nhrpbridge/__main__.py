"""`python -m nhrpbridge` is the `nhrpbridge` command."""
import sys

from .cli import main

sys.exit(main())
