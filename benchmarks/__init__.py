"""Speed benchmarks; each module prints a table (see BENCHMARKS.md)."""
