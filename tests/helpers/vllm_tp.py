"""capture_generate with tensor_parallel_size=2 on the CPU engine; prints the result as JSON.

usage: vllm_tp.py MODEL_DIR OUT
"""

import json
import sys

if __name__ == "__main__":
    from tensortap.capture.config import build_config
    from tensortap.integrations.vllm.offline import capture_generate

    model, out = sys.argv[1], sys.argv[2]
    result = capture_generate(model, build_config(out=out, modules=[r"layers\.\d+$", "qkv_proj", "logits_processor"]),
                              max_new_tokens=2, dtype="float32",
                              llm_kwargs={"tensor_parallel_size": 2, "max_model_len": 256})
    print(json.dumps(result))
