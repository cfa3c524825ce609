"""Tether Gateway.

The edge of Tether: it authenticates tenants, validates and rate-limits
inference requests, starts their traces and streams results back to clients.
"""
