"""Alert rules: Prometheus-style evaluation (pending, firing, resolved), silences, acks."""
