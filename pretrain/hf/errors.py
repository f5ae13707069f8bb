"""The one error type of HF interop."""


class ExportError(ValueError):
    """A user-caused problem with an HF directory or tokenizer (reported in one line by launch)."""
