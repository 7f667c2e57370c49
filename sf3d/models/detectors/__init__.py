from .classifier import ImageClassifier

__all__ = ['ImageClassifier']
