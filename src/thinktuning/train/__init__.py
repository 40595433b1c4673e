"""The loop: the trainer that wires the steps (trainer), the optimizer update (update), and its helpers (log-probs,
micro-batches, processes, signals, step logs).
"""
