"""`python -m laneway.dataplane --state .laneway`: run the data plane (the daemon starts it)."""

import sys

from laneway.dataplane.main import main

sys.exit(main(sys.argv[1:]))
