"""Gemma 3 in transformers from the same GGUF tunegate runs, for the
PyTorch peers (scripts/bench-tune-peft.py, scripts/peft-agreement.py).

The first call converts the GGUF once to a float32 safetensors directory
(transformers dequantizes it; it still flags the model as GGUF-quantized and
refuses save_pretrained, so the weights are saved directly) and saves the
GGUF's tokenizer beside it; later calls load that directory in seconds.
"""
import os


def load_base(hf_dir, gguf):
    """(model in float32, eval mode; tokenizer) from hf_dir, made from gguf if absent."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not os.path.isfile(os.path.join(hf_dir, "config.json")):
        import safetensors.torch

        model = AutoModelForCausalLM.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf), dtype=torch.float32)
        os.makedirs(hf_dir, exist_ok=True)
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.config.save_pretrained(hf_dir)
        safetensors.torch.save_model(model, os.path.join(hf_dir, "model.safetensors"))
    if not os.path.isfile(os.path.join(hf_dir, "tokenizer.json")):
        tok = AutoTokenizer.from_pretrained(os.path.dirname(gguf), gguf_file=os.path.basename(gguf))
        tok.save_pretrained(hf_dir)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    model.eval()
    return model, tok
