"""A plain vLLM program (no tensortap code): generate greedily, print JSON results.

usage: vllm_generate.py MODEL_DIR JSON_LLM_KWARGS PROMPT...
The tensortap plugin captures it when TENSORTAP_DIR / TENSORTAP_CONFIG is set.
"""

import json
import sys

if __name__ == "__main__":
    from vllm import LLM, SamplingParams

    model, kwargs, prompts = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3:]
    llm = LLM(model=model, **kwargs)
    outs = llm.generate(prompts, SamplingParams(max_tokens=3, temperature=0.0), use_tqdm=False)
    print(json.dumps({"texts": [o.outputs[0].text for o in outs],
                      "token_ids": [list(o.outputs[0].token_ids) for o in outs]}))
