import sys

from labelfree_jax.cli import main

sys.exit(main())
