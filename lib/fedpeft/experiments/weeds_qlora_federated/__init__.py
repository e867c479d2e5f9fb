"""Weeds with a QLoRA head across federated farmers: settings, runs (one DVC stage each) and report."""
