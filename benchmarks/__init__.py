"""Speed measurements that print a table; BENCHMARKS.md records the latest figures."""
