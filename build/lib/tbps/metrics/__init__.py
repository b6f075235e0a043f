from .retrieval import TextToImageRetrieval, retrieval_metrics

__all__ = ["TextToImageRetrieval", "retrieval_metrics"]
