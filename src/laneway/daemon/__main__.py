"""`python -m laneway.daemon -f laneway.yaml`: run the daemon in the foreground."""

import sys

from laneway.daemon.main import main

sys.exit(main(sys.argv[1:]))
