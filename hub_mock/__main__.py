"""`python -m hub_mock` is the `hub-mock` command."""

import sys

from hub_mock.cli import main

sys.exit(main())
