"""Tether's shared library: generated contracts (``tether.v1``), the RPC runtime
(``tether.rpc``), and the pieces every service shares.

Services (``gateway``, ``orchestrator``, ``registry``, ``worker``) depend on this
package and never on each other.
"""
