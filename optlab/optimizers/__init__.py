"""Optax GradientTransformations only: no training loops here."""
