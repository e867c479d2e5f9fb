"""LoRA vs QLoRA on a language model and a diffusion UNet: settings, runs (one DVC stage each) and report."""
