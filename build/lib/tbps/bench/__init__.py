"""`tbps bench`: training throughput, MFU, peak memory, data loading, gallery encoding and
evaluation timings, printed as JSON. One measurement per module; ``run`` puts them together."""
