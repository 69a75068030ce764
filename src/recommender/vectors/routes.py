"""Admin: the live embedding model and refits."""

from typing import Annotated

from litestar import Controller, Response, get, post
from litestar.di import NamedDependency
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_202_ACCEPTED

from recommender.platform.security import WRITES
from recommender.vectors.model import ModelInfo
from recommender.vectors.service import LiveModel, RefitBusyError, VectorService


class ModelController(Controller):
    path = "/api/v1/admin/model"
    tags = ["admin"]  # noqa: RUF012 - read by Litestar as a class attribute
    opt = WRITES

    @get("/", summary="The live embedding model")
    async def describe_model(self, vectors: NamedDependency[VectorService]) -> LiveModel:
        return await vectors.describe()

    @post("/refit", summary="Refit the model on the current catalog and swap the index")
    async def refit_model(
        self,
        vectors: NamedDependency[VectorService],
        wait: Annotated[bool, Parameter(description="answer when the new model is live")] = False,
    ) -> Response[ModelInfo | dict[str, str]]:
        """`wait=true` answers when the new model is live; otherwise 202 at once."""
        if wait:
            return Response(await vectors.refit(reason="admin request"), status_code=HTTP_200_OK)
        if (await vectors.describe()).building is not None:
            raise RefitBusyError("a refit is already running")
        vectors.start_refit(reason="admin request")
        return Response({"status": "started"}, status_code=HTTP_202_ACCEPTED)
