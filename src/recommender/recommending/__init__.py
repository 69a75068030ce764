"""Recommendation strategies and their routes."""

from recommender.recommending.routes import RecommendController
from recommender.recommending.service import RecommendService

__all__ = ["RecommendController", "RecommendService"]
