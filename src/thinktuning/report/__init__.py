"""The HTML report of run folders (html) and its plots (plots)."""
