"""The real data set: Women's E-Commerce Clothing Reviews, as model inputs, and the one way of batching it."""

from mahia.data.batching import Batch, feeds_at_points, iter_batches, length_sorted_order, pad_tokens, run_batches
from mahia.data.reviews import DataConfig, DataError, ReviewsDataset, default_data_path, load_reviews
from mahia.data.tokenizer import encode_texts

__all__ = ["Batch", "DataConfig", "DataError", "ReviewsDataset", "default_data_path", "encode_texts",
           "feeds_at_points", "iter_batches", "length_sorted_order", "load_reviews", "pad_tokens", "run_batches"]
