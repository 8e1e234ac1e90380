"""The skew gate: a batch against a version's data contract (`expectations`), its verdict, its report."""
