"""The savings frontier: what federated learning, LoRA, update quantization and less frequent synchronization save in
bytes, and what each costs in accuracy, on one task and one yardstick (the study's own question, no seed report)."""
