"""Evaluation: benchmarks, generators (transformers, OpenAI-compatible servers), scoring, reflection rates, and
compare.
"""
