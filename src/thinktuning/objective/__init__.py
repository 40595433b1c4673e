"""Steps 4-5, the pure maths: group advantages (advantages), the shaped PPO loss (loss), and the registry that makes
each variant a config value (registry).
"""
