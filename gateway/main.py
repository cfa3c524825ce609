"""Command-line entry point of the Tether Gateway (`bazel run //gateway`).

The edge of Tether: it authenticates tenants, validates and rate-limits
inference requests, starts their traces and streams results back to clients.
"""

import argparse
import sys

DESCRIPTION = (
    "The edge of Tether: it authenticates tenants, validates and rate-limits "
    "inference requests, starts their traces and streams results back to clients."
)


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(prog="gateway", description=f"Tether Gateway. {DESCRIPTION}")


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(f"Tether Gateway. {DESCRIPTION}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
