"""The Tether application: the ``tether`` command and the local network it starts.

The composition root above the services: it may import ``gateway``, ``orchestrator``,
``registry`` and ``worker`` (and ``tether``); nothing below imports it.
"""
