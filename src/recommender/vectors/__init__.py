"""Product embeddings and the RediSearch HNSW index they live in."""

from recommender.vectors.consumer import indexer
from recommender.vectors.index import Filters, Neighbour, VectorIndex, text_terms
from recommender.vectors.model import EmbeddingModel, ProductText, fit_model
from recommender.vectors.repository import ModelStore
from recommender.vectors.routes import ModelController
from recommender.vectors.service import BlendNeighbours, VectorService

__all__ = [
    "BlendNeighbours",
    "EmbeddingModel",
    "Filters",
    "ModelController",
    "ModelStore",
    "Neighbour",
    "ProductText",
    "VectorIndex",
    "VectorService",
    "fit_model",
    "indexer",
    "text_terms",
]
