"""``python -m repbend`` (and ``accelerate launch -m repbend``) runs the CLI."""
import sys

from .cli import main

sys.exit(main())
