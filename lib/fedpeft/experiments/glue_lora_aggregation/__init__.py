"""GLUE, federated aggregation of LoRA adapters: settings, runs (one DVC stage each) and report."""
