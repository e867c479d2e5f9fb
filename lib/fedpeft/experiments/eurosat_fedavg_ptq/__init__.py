"""EuroSAT FedAvg + post-training quantization: settings, runs (one DVC stage each) and report."""
