"""`abacus bench ...`: benchmarks that print figures and ratios."""
