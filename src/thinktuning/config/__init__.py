"""Configuration: the typed schema users read (schema), presets and overrides (load), range and cross-field checks
(checks).
"""
