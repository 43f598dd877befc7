"""Llama 3.2 Vision (11B, 90B, Instruct) and Llama Guard 3 Vision → ``MllamaForConditionalGeneration``."""
