"""The savings frontier: what federated learning, LoRA, update quantization and less frequent synchronization save in
bytes, and what each costs in accuracy, on one yardstick per task: LoRA and the full model on a text task, the EuroSAT
CNN's full-model updates (the study's own question, no seed report)."""
