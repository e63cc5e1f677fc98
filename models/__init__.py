"""Model architectures: configs and the graph builders importers call."""
