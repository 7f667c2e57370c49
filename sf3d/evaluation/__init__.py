from .classification import Accuracy  # noqa: F401
