"""GGUF output (llama.cpp's format): streaming writer, tensor encodings, tokenizer metadata, reader."""
