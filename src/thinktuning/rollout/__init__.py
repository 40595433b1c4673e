"""Step 1, student rollouts: the record a step passes along (types), the transformers sampler and its KV-cache decoding
(sampler, decoding), and vLLM (vllm), behind one engine interface (engine).
"""
