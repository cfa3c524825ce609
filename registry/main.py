"""Command-line entry point of the Tether Model Registry (`bazel run //registry`).

The catalogue of models: versions, capabilities, input and output schemas,
policies and artifact digests.
"""

import argparse
import sys

DESCRIPTION = (
    "The catalogue of models: versions, capabilities, input and output schemas, "
    "policies and artifact digests."
)


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="registry", description=f"Tether Model Registry. {DESCRIPTION}"
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(f"Tether Model Registry. {DESCRIPTION}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
