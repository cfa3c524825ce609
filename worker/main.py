"""Command-line entry point of the Tether Inference Worker (`bazel run //worker`).

Loads verified model artifacts, runs inference on CPU or GPU, streams result
chunks and announces its health on the presence topic.
"""

import argparse
import sys

DESCRIPTION = (
    "Loads verified model artifacts, runs inference on CPU or GPU, streams result "
    "chunks and announces its health on the presence topic."
)


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="worker", description=f"Tether Inference Worker. {DESCRIPTION}"
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(f"Tether Inference Worker. {DESCRIPTION}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
