"""Weights in and out: Hugging Face safetensors folders and GGUF files, placed straight onto the mesh."""
