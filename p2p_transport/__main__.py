"""``python -m p2p_transport``: see :mod:`p2p_transport.cli`."""

import sys

from p2p_transport.cli import main

sys.exit(main())
