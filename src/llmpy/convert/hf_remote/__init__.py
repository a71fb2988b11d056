"""The two files `llmpy convert --to hf` copies, as they are, into the export of a modern-family model:
configuration_llmpy.py and modeling_llmpy.py. They import only torch and transformers (never llmpy), so that
`AutoModelForCausalLM.from_pretrained(dir, trust_remote_code=True)` loads the model anywhere."""
