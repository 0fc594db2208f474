"""Foundations every layer may use: errors, atomic writes, the strict schema base, shared validators, hashing, version.

Imports nothing else of labelfree_jax.
"""
