"""`abacus shadow run`: both pipelines side by side on the same events, then the audit."""
