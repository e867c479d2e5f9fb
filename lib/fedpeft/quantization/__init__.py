"""Quantization: ``ptq`` (post-training FP16 / INT8 dynamic / INT8 static of a trained model, with measured
sizes) and ``nf4`` (4-bit NF4 layers with bitsandbytes, their measured bytes, analytic memory). Imports only
:mod:`fedpeft.core`."""
