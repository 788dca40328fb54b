"""`python -m fedsec` runs the command-line interface."""

import sys

from fedsec.cli import main

sys.exit(main())
