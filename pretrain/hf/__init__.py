"""Interop with Hugging Face transformers: weight/config conversion, export and import."""
