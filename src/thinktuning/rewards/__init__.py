"""Step 3, rewards: answer extraction (answers), the math-equivalence checker (checker), and TRL-style reward functions
(functions).
"""
