"""`python -m laneway.mcp [--http] [--api URL --token T]`: what `laneway mcp` runs."""

import argparse
import sys

from laneway.client import CliError
from laneway.mcp.main import main

parser = argparse.ArgumentParser(prog="laneway mcp")
parser.add_argument("--http", action="store_true", help="streamable HTTP instead of stdio")
parser.add_argument("--host", default="127.0.0.1")
parser.add_argument("--port", type=int, default=8765)
parser.add_argument("--api", default=None)
parser.add_argument("--token", default=None)
args = parser.parse_args()
try:
    main(api=args.api, token=args.token, http=args.http, host=args.host, port=args.port)
except CliError as exc:
    print(f"Error: {exc.message}", file=sys.stderr)  # noqa: T201
    sys.exit(1)
except KeyboardInterrupt:
    sys.exit(130)
