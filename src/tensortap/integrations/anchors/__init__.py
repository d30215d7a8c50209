"""Engine adapters that map a run's raw records to anchors (vocabulary: vocab.py).

``hf.py`` (transformers and plain PyTorch names) and ``vllm.py`` each provide
``anchor_set(run, index) -> AnchorSet``; integrations/registry.py lists them. They read
records and run.json only; they never import the engine, so runs can be compared on a
machine without transformers or vLLM.
"""
