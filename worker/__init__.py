"""Tether Inference Worker.

Loads verified model artifacts, runs inference on CPU or GPU, streams result
chunks and announces its health on the presence topic.
"""
