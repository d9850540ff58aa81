"""`python -m bge_ref ...` is the `bge-ref` command."""
import sys

from .cli import main

sys.exit(main())
