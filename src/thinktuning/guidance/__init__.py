"""Step 2, guidance: the pure rules (rules: schedule, selection, splice, masks) and the step that applies them with a
teacher (guide).
"""
