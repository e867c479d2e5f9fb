"""The top layer: one module per experiment, each holding its parameter schema and the functions its notebook
composes (``eurosat_fedavg_ptq``, ``weeds_qlora_federated``, ``code_lm_fedprox``, ``lora_vs_qlora``,
``glue_lora_aggregation``). May import every layer below."""
