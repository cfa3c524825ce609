"""Tether's developer tools: code generation, model builders, publishing, test helpers."""
