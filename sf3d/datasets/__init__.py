from .imagenet import ImageNetFolder  # noqa: F401
