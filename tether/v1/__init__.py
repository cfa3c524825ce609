"""Generated from ``proto/tether/v1``: do not edit; run ``python tools/gen_protos.py``."""
