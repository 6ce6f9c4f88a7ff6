"""The real data set: Women's E-Commerce Clothing Reviews, as model inputs."""

from mahia.data.reviews import (DataConfig, DataError, ReviewsDataset, default_data_path, load_reviews)
from mahia.data.tokenizer import encode_texts

__all__ = ["DataConfig", "DataError", "ReviewsDataset", "default_data_path", "encode_texts", "load_reviews"]
