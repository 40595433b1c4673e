"""Training data: the record (examples), the built-in arithmetic task (arithmetic), and GSM8K/MATH from files or the
hub (load).
"""
