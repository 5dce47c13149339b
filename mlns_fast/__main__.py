"""`python -m mlns_fast` (also what `accelerate launch -m mlns_fast` runs)."""
import sys

from .cli import main

sys.exit(main())
