"""Tether Orchestrator.

Discovers healthy workers over Hyperswarm, places each inference request
on the best one, reserves capacity, retries and trips circuit breakers.
"""
