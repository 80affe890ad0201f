"""Inference engine: decoding, preprocessing, model registry, batched prediction, Grad-CAM.

Plain Python + numpy + Keras; only ``tasks.py`` and the management commands touch Django.
"""
