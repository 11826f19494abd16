"""The ServerApp: initial pruning, masked aggregation, mask reconfiguration, results."""
