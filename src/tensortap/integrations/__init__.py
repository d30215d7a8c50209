"""Engine adapters. The only layer that imports transformers or vLLM."""
