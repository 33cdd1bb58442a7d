"""Text to token ids and back: tiktoken encodings, Meta's tokenizer.model, tokenizer.json (Hugging Face's tokenizers),
SentencePiece vocabularies, and what they share (vocab.py)."""
