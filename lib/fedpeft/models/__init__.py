"""Models built from code or loaded offline, and the adapters put on them. Imports :mod:`fedpeft.core`,
:mod:`fedpeft.data` and :mod:`fedpeft.quantization`.

Modules: ``cnn`` (the EuroSAT CNN), ``text`` (sequence classifiers with LoRA), ``causal_lm`` (causal LMs,
published architectures on the meta device, analytic training memory), ``backbones`` (YOLO11-cls and
EfficientNet-Lite0 as frozen features + head), ``feature_cache`` (a frozen backbone's features per augmented
view), ``head`` (the weeds head with LoRA or QLoRA), ``lora_settings`` (the one check of rank, alpha, dropout
and targets), ``counting`` (parameter counts).
"""
