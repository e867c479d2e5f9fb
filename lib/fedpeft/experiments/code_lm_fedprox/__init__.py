"""Python code, federated LoRA, FedProx vs FedAvg: settings, runs (one DVC stage each) and report."""
