"""`python -m controller`: same as the `sentinel-haproxy` console script."""

import sys

from controller.cli import main

sys.exit(main())
