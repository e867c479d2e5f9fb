"""Federated learning, server and client side. Imports the layers below it (core, data, models, training).

Modules: ``strategies`` (FedAvg, FedProx, DiLoCo; aggregation as pure functions), ``lora_aggregation``
(delta-W + SVD, naive A/B, FFA-LoRA, FLoRA; one-shot merges), ``partition`` (client shards), ``ledger``
(communication bytes of real serialized messages), ``network`` (simulated links), ``loop`` (the in-process round
loop, checkpoint and resume), ``flower_bridge`` (the ClientApp step and server strategy both Flower engines share),
``flower_engine`` (the same strategies and trainers on Flower's simulation) and ``deployment`` (Flower's Deployment
Engine: the study's Flower App as real SuperLink and SuperNode processes over shaped links).
"""
