"""Tether Model Registry.

The catalogue of models: versions, capabilities, input and output schemas,
policies and artifact digests.
"""
